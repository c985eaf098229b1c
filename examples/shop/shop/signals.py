from patchboard import Signal

quote_requested = Signal(name="shop.quote_requested")
"""Collected: each carrier's listener answers with a quote for the cart."""

carrier_quote_requested = Signal(name="shop.carrier_quote_requested")
"""Collected: one listener asks the carrier the call names (``carrier=``) for a quote."""

order_paid = Signal(name="shop.order_paid", ordered=True)
"""Side effects on the order, one at a time, highest priority first."""

order_completed = Signal(name="shop.order_completed")
"""Sent once the order is saved; its listeners run in the Tasks worker after the commit.
(An ordered signal runs everything inline, so after-commit work has a signal of its own.)"""
