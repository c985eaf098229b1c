from django.db import models


class Evidence(models.Model):
    """What a background listener did, written by the worker for the test to read."""

    kind = models.CharField(max_length=32)
    reference = models.CharField(max_length=32)
    detail = models.JSONField(default=dict)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "e2e"
