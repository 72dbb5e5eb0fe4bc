"""Waiting for a job to finish without holding a thread: block on its Redis event stream; and
``Prefer: wait=N``, which asks a submit to wait."""

from __future__ import annotations

import re
import time
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from latentq.keys import job_events_key, job_key, rq_job_key
from latentq.records import JobRecord, JobRecords
from latentq.transitions import TERMINAL_EVENTS, has_ended

#: Longest blocking read between two looks at the record, seconds: bounds how late a job whose
#: worker died (no terminal event, found by reconciliation with RQ) is noticed.
RECHECK_S = 2.0
#: Longest ``Prefer: wait`` honoured, seconds.
MAX_WAIT_S = 60

_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*(\d+)", re.IGNORECASE)


def prefer_wait(header: str | None) -> int:
    """Return the seconds ``Prefer: wait=N`` asks for (at most ``MAX_WAIT_S``), or 0."""
    match = _PREFER_WAIT.search(header or "")
    return min(int(match[1]), MAX_WAIT_S) if match else 0


async def job_ended(redis: AsyncRedis, job_id: str) -> bool:
    """Return whether ``job_id`` is over (or expired): two hash fields read in one round trip, with
    no thread and no parsing, so hundreds of waiting streams can ask every ``RECHECK_S``."""
    async with redis.pipeline(transaction=False) as pipeline:
        pipeline.hget(job_key(job_id), "status")
        pipeline.hget(rq_job_key(job_id), "status")
        status, rq_status = await pipeline.execute()
    return has_ended(status and status.decode(), rq_status and rq_status.decode())


async def wait_for_job(
    redis: AsyncRedis, records: JobRecords, job_id: str, timeout_s: float
) -> JobRecord | None:
    """Return ``job_id``'s record once terminal, or as it stands after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    last_event = "0"
    ended = await job_ended(redis, job_id)
    while not ended and (remaining := deadline - time.monotonic()) > 0:
        block_ms = max(1, int(min(remaining, RECHECK_S) * 1000))
        answer: Any = await redis.xread({job_events_key(job_id): last_event}, block=block_ms, count=100)
        terminal_event = False
        for _stream, entries in answer:
            last_event = entries[-1][0]
            terminal_event = any(fields[b"event"].decode() in TERMINAL_EVENTS for _, fields in entries)
        # A terminal event is the record's last change: no need to look at the record first.
        ended = terminal_event or await job_ended(redis, job_id)
    return await run_in_threadpool(records.get, job_id)
