"""The URLs of the Debug Toolbar panel's tests: imported once the toolbar's app is installed."""

from debug_toolbar.toolbar import debug_toolbar_urls
from django.urls import path

from tests.project.test_toolbar import (
    async_view,
    left_view,
    quiet_view,
    right_view,
    stream_view,
    sync_view,
)

urlpatterns = [
    path("sync/", sync_view),
    path("async/", async_view),
    path("quiet/", quiet_view),
    path("left/", left_view),
    path("right/", right_view),
    path("stream/", stream_view),
    *debug_toolbar_urls(),
]
