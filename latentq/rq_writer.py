"""Queue RQ jobs on any Redis pipeline, sync or asyncio, inside the caller's transaction.

``Queue.enqueue_call(..., pipeline=p)`` asks the server its version (an ``INFO`` round trip per
``Queue`` object), calls ``p.multi()`` itself (so nothing may be queued on ``p`` before it), only
takes a sync pipeline, and builds a ``Job`` object (costs in docs/BENCHMARKS.md). ``queue_job``
writes the same keys for
a job with no dependencies, TTL, retry, callbacks or rate limit: the job hash (the fields of
RQ's ``Job.to_dict``), its id at the tail of the queue list, and the queue in RQ's set of
queues. RQ workers, ``rq info`` and rq-dashboard see a normal queued job;
``tests/integration/test_rq_writer.py`` compares every field with what RQ's own ``enqueue_call``
writes, so an RQ upgrade that changes the layout fails there.
"""

from __future__ import annotations

import uuid
import zlib
from typing import Any

from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.client import Pipeline
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import now, utcformat

#: A pipeline of either client: both queue commands synchronously and run them on ``execute``.
AnyPipeline = Pipeline | AsyncPipeline

#: The fields RQ writes empty for a job that has not run and has no callbacks or group.
_EMPTY_FIELDS = ("success_callback_name", "failure_callback_name", "stopped_callback_name", "started_at",
                 "ended_at", "last_heartbeat", "worker_name", "group_id")  # fmt: skip


def queue_job(
    pipeline: AnyPipeline,
    queue: str,
    func: str,
    kwargs: dict[str, Any],
    *,
    timeout: int,
    result_ttl: int,
    failure_ttl: int,
    description: str,
    job_id: str | None = None,
    push: bool = True,
) -> str:
    """Queue on ``pipeline`` the RQ job calling ``func(**kwargs)`` (a dotted path, JSON arguments,
    RQ's ``JSONSerializer``) on RQ queue ``queue``; return its id. Without ``push`` the job is
    written but not put on the queue's list (``latentq.fair_share`` puts it there in its turn)."""
    job_id = job_id or str(uuid.uuid4())
    stamp = utcformat(now())
    mapping: dict[Any, Any] = dict.fromkeys(_EMPTY_FIELDS, "")
    mapping.update(
        created_at=stamp, enqueued_at=stamp, status="queued", origin=queue, description=description,
        timeout=timeout, result_ttl=result_ttl, failure_ttl=failure_ttl,
        data=zlib.compress(JSONSerializer.dumps((func, None, [], kwargs))),
    )  # fmt: skip
    queue_key = Queue.redis_queue_namespace_prefix + queue
    pipeline.sadd(Queue.redis_queues_keys, queue_key)
    pipeline.hset(Job.redis_job_namespace_prefix + job_id, mapping=mapping)
    if push:
        pipeline.rpush(queue_key, job_id)
    return job_id
