"""
``make stress``: patchboard's promises under load and faults, as deployed.

The example shop (examples/shop) runs under uvicorn with two worker
processes, its carrier breakers in Redis (a private ``redis-server`` the run
starts, stops and starts again), one carrier down and one slow, and ``gls``
quoted by a sync listener in a listener thread, orders placed on the side
(their background listeners on RQ, through the outbox, with an ``rqworker``
and the relay beside the shop). A closed-loop load runs on loopback
(:mod:`bench.stress.load`) while the faults happen on schedule: Redis
stopped and restarted, the background listeners' broker stopped and
restarted, the carriers service killed and restarted, clients going away
mid-request. Then the checks (:mod:`bench.stress.checks`)
judge what the run saw, and the real Tasks engines and the hostile-input
tests run under pytest (``-m stress``).

    python -m bench.stress            the full run (200 connections, 60 s), then pytest -m stress
    python -m bench.stress --ci       the bounded run that CI makes (``make test``)

It prints a progress line while it runs and a one-screen report, and exits 1
if any check failed.
"""
