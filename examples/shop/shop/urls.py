from importlib.util import find_spec

from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from shop import views

urlpatterns = [
    path("quotes", views.quotes),
    path("orders", views.orders),
    path("orders/<int:pk>", views.order_detail),
    path("admin/", admin.site.urls),
]

# TODO(merge): the staff status page lands with patchboard.urls; then mount it unconditionally.
if find_spec("patchboard.urls"):
    urlpatterns.append(path("patchboard/", include("patchboard.urls")))

urlpatterns += staticfiles_urlpatterns()  # the admin's CSS under uvicorn (DEBUG only)
