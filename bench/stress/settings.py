"""
The example shop's settings for the stress run (``make stress``): the shop's
own (examples/shop/shop/settings.py), with

* the circuit breakers' state in Redis (``STRESS_REDIS_URL``: the run's own
  private ``redis-server``, which it stops and starts again), shared by the
  shop's worker processes;
* ``gls`` quoted by a *sync* listener in a listener thread of its own
  (``bench.stress.shop``), so the run also loads the thread bound, which is
  set below the queue's;
* a middleware that stamps each response with the process that served it and
  how many quote and order requests that process started (the run's exact
  count of listener calls asked for, per process);
* background listeners on RQ (django-tasks-rq), its broker another private
  ``redis-server`` (``STRESS_BROKER_URL``, which the run also stops and
  starts), worked by an ``rqworker`` beside the shop, with the outbox on (its
  default for RQ) and ``manage.py patchboard relay`` running too, its
  ``OUTBOX_GRACE`` 2 s (the relay delivers a task the broker lost, or a dead
  rqworker dropped, again 2 s after its last delivery, then 4, 8, ...: well
  within the drain's 30 s after the load); the run's
  own background listener of ``order_completed`` leaves its evidence in the
  shop's database (the ``stress_shop`` app's ``Receipt``);
* ``DEBUG`` off, as deployed;
* the carriers' circuits (one keyed breaker, as in the shop) opening after
  three failures in a row, the rule the run's checks were written for, not
  the shop's failure-rate window: under a rate rule every successful call is
  reported to the breaker's Redis (the window needs it), and on the run's two
  shared cores those round trips made a worker meet its store timeout before
  the outage, so the outage check could not tell the two apart.
"""

import os

from shop.settings import *  # noqa: F403  (the example's settings, extended)
from shop.settings import CARRIER_BREAKER, CARRIERS, INSTALLED_APPS, MIDDLEWARE, PATCHBOARD

DEBUG = False

SYNC_CARRIER = "gls"
CARRIERS = [name for name in CARRIERS if name != SYNC_CARRIER]
"""The async carriers the shop connects; ``bench.stress.shop`` connects the sync one."""

INSTALLED_APPS = [*INSTALLED_APPS, "django_rq", "bench.stress.shop.StressShopConfig"]
MIDDLEWARE = [*MIDDLEWARE, "bench.stress.shop.stamp_process"]

MAX_THREADS = 4
"""Below the queue's MAX_WORKERS (12): the thread bound is the one that binds."""

RQ_QUEUES = {"default": {"URL": os.environ["STRESS_BROKER_URL"]}}
TASKS = {"default": {"BACKEND": "django_tasks_rq.RQBackend", "QUEUES": ["default"]}}

_CARRIERS = PATCHBOARD["BREAKERS"][CARRIER_BREAKER]
PATCHBOARD = {
    **PATCHBOARD,
    "STORE": os.environ["STRESS_REDIS_URL"],
    "MAX_THREADS": MAX_THREADS,
    "BACKGROUND": {"OUTBOX_GRACE": 2.0},
    "BREAKERS": {
        CARRIER_BREAKER: {
            "key": _CARRIERS["key"],
            "failure_threshold": 3,
            "reset_timeout": _CARRIERS["reset_timeout"],
        }
    },
}
