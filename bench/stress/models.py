"""The stress run's evidence in the shop's database (the ``stress_shop`` app)."""

from __future__ import annotations

from django.db import models


class Receipt(models.Model):
    """
    One run of :func:`bench.stress.shop.record_receipt`, for the order its
    signal was sent for: the run counts them per order (0 is a call lost, 2 a
    call run twice), so the order is no unique key here.
    """

    order_id = models.BigIntegerField(db_index=True)
    at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "stress_shop"
