"""The chaos harness: jobs from concurrent clients while workers, Redis, S3 and the dispatcher are
killed under them; then every ``202`` is reconciled against what the service did.

One command, bounded in count and time, on loopback only. It starts its own stack in a temporary
folder (Redis with its append-only file, SeaweedFS S3, the API, ``--workers`` workers of the
embedded tiny model, the webhook dispatcher and a webhook receiver), and has ``--clients`` clients
submit ``--jobs`` jobs (mixed sizes; some with webhooks, a few to a slow receiver; some cancelled
at a random moment). Submits that meet a ``503`` or a dropped connection are retried with the same
``Idempotency-Key``, as a client should. Meanwhile the faults, one after another:

- ``--kills`` SIGKILLs of the worker holding the most jobs (the first one timed the moment a
  worker claims a round of several), each replaced by a new worker at once;
- one SIGTERM (the worker drains and must exit 0), replaced too;
- Redis ``kill -9`` (under load, while clients still submit), restarted 3 s later from its AOF;
- S3 killed for 3 s, then restarted;
- the dispatcher SIGKILLed while a delivery is in flight, restarted 1 s later.

Then it waits (``--deadline-s`` at most) until every accepted job is terminal and every webhook
sent, and reconciles each ``202`` against the job's record (through ``GET /v1/jobs/{id}``), its
event stream, the objects in S3, RQ's lists and registries, the leases and the receiver's log.
It prints accepted, succeeded, failed by error name, canceled, **lost** (accepted, and no record
or never terminal), **duplicated** (more than one terminal event, two different completed
webhooks, or a cancel answered ``canceled`` that did not end so), **stuck** (not terminal at the
deadline), orphaned objects, jobs left in RQ's lists, and the time from each worker kill to the
killed worker's jobs' terminal states. Jobs acknowledged from 2 s before the Redis kill until its
replies in flight have arrived (0.5 s after it is gone) that are missing afterwards are the AOF
``everysec`` window (a slow background fsync postpones the AOF write up to 2 s): reported on their
own. Exit
status 1 if any lost, duplicated, stuck, orphaned or left-over job is outside that window.

    .venv/bin/python -m bench.chaos [--jobs 100] [--kills 3] [--clients 4] [--workers 2]
        [--rate 30] [--seed 1] [--deadline-s 180] [--json bench/results/chaos.json]
"""
