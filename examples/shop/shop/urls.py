from django.contrib import admin
from django.contrib.staticfiles.urls import staticfiles_urlpatterns
from django.urls import include, path

from shop import views

urlpatterns = [
    path("quotes", views.quotes),
    path("quotes/first", views.first_quote),
    path("quotes/<str:carrier>", views.quote_from),
    path("orders", views.orders),
    path("orders/<int:pk>", views.order_detail),
    path("admin/", admin.site.urls),
    path("patchboard/", include("patchboard.urls")),  # the staff status page
    path("metrics", views.metrics),  # Prometheus scrapes it
]
urlpatterns += staticfiles_urlpatterns()  # the admin's CSS under uvicorn (DEBUG only)
