"""
The example shop under locust: a load generator that nobody here wrote, beside
``bench/load.py``.

Not part of ``make bench`` or the tests (locust is not among the project's
dependencies: ``pip install locust==2.47.0`` in a virtualenv of its own). With
the shop served (``make serve``, or ``SHOP_BREAKERS=off make serve`` for the
shop without its breakers) and, for the overload case, one carrier hanging::

    curl -X POST -d '{"latency_ms": 60000}' http://127.0.0.1:8001/control/dhl
    locust -f bench/locustfile.py --headless --host http://127.0.0.1:8000 \\
        -u 50 -r 50 -t 60s --csv /tmp/shop

Each user asks for quotes again as soon as it has its answer (a closed loop,
like ``bench/load.py``): ``GET /quotes`` most of the time, the first-quote
stream now and then. Locust's summary gives requests/s and the percentiles;
a response slower than the shop's deadline plus a margin is marked failed,
so the failures column counts the deadline's misses.
"""

from __future__ import annotations

import random

from locust import FastHttpUser, constant, task

DEADLINE_S = 2.0
"""The shop's ``QUOTES_BUDGET``: every collect of ``GET /quotes`` answers by then."""

MARGIN_S = 0.25
"""What the answer may take beyond the deadline (see the README's *Time budgets*)."""


class Shopper(FastHttpUser):
    wait_time = constant(0)

    @task(9)
    def quotes(self) -> None:
        cart = random.randint(1, 500)
        with self.client.get(
            f"/quotes?cart={cart}", name="/quotes", catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}")
            elif response.request_meta["response_time"] > (DEADLINE_S + MARGIN_S) * 1000:
                response.failure("answered past the deadline's margin")

    @task(1)
    def first_quote(self) -> None:
        cart = random.randint(1, 500)
        self.client.get(f"/quotes/first?cart={cart}", name="/quotes/first")
