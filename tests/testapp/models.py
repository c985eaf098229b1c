from django.db import models


class Order(models.Model):
    reference = models.CharField(max_length=32)
    paid_at = models.DateTimeField(null=True)

    class Meta:
        app_label = "testapp"


class Coupon(models.Model):
    """A model whose primary key is not an integer."""

    code = models.UUIDField(primary_key=True)

    class Meta:
        app_label = "testapp"
