from django.contrib import admin

from shop.models import Order


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ["id", "cart", "total", "loyalty_points", "receipt_sent_at", "created_at"]
