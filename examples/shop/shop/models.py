from django.db import models


class Order(models.Model):
    cart = models.PositiveIntegerField()
    total = models.DecimalField(max_digits=9, decimal_places=2)
    history = models.JSONField(default=list, help_text="what order_paid's listeners did, in order")
    stock_reserved = models.BooleanField(default=False)
    loyalty_points = models.PositiveIntegerField(default=0)
    receipt_sent_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.pk,
            "cart": self.cart,
            "total": str(self.total),
            "history": self.history,
            "stock_reserved": self.stock_reserved,
            "loyalty_points": self.loyalty_points,
            "receipt_sent_at": self.receipt_sent_at and self.receipt_sent_at.isoformat(),
        }
