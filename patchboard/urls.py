"""
The URLs of patchboard's staff status page (see ``patchboard._status``)::

    # urls.py
    path("patchboard/", include("patchboard.urls")),

The page is named ``patchboard:status``.
"""

from django.urls import path

from patchboard._status import status_page

app_name = "patchboard"
urlpatterns = [
    path("", status_page, name="status"),
]
