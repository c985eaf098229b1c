"""The test project's URLs: the admin, and patchboard's status page mounted as the README says."""

from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("patchboard/", include("patchboard.urls")),
]
