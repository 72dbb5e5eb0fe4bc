"""A job's state machine: which record changes may happen from which status, written once, and
the one function that records a change guarded by it.

Every change of a job record (``started``, ``progress``, ``succeeded``, ...) is a ``CommandBatch``
that runs only while the record exists and its status is one the change may come from. So a job
reaches exactly one terminal status, once; its stream gets exactly one terminal event and its
webhook exactly one ``completed`` delivery (queued in the same script); and a late write never
re-creates a record that expired.
"""

from __future__ import annotations

import json
from typing import Any

from latentq.command_batch import CommandBatch
from latentq.contract import JobError, JobStatus, WebhookTarget, status_from_rq
from latentq.deliveries import WEBHOOK_EVENT_OF, queue_delivery
from latentq.errors import ERRORS
from latentq.keys import job_events_key, job_key
from latentq.rq_writer import AnyPipeline

QUEUED, RUNNING = JobStatus.QUEUED, JobStatus.RUNNING

#: For each record change (its event's name), the statuses it may be made from. ``requeued``: the
#: job's worker was lost and it goes back to its queue for another attempt.
TRANSITIONS: dict[str, tuple[JobStatus, ...]] = {
    "started": (QUEUED,),
    "progress": (RUNNING,),
    "preview": (RUNNING,),
    "requeued": (QUEUED, RUNNING),
    "succeeded": (RUNNING,),
    "failed": (QUEUED, RUNNING),
    "canceled": (QUEUED, RUNNING),
}

#: The status each change leaves the job in (progress and previews leave it as it is).
STATUS_AFTER: dict[str, JobStatus] = {
    "started": RUNNING,
    "requeued": QUEUED,
    "succeeded": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
}

#: The events that end a job's stream: its terminal statuses.
TERMINAL_EVENTS = frozenset(status.value for status in JobStatus if status.is_terminal)

#: Most events kept in a job's stream.
MAX_EVENTS = 1000


def record_change(
    batch: CommandBatch,
    job_id: str,
    event: str,
    fields: dict[str, Any],
    retention_s: int,
    webhook: WebhookTarget | None = None,
    occurred_at: str = "",
    data: dict[str, Any] | None = None,
) -> CommandBatch:
    """Add to ``batch`` the change ``event`` of ``job_id``'s record: the guard of ``TRANSITIONS``,
    ``fields`` (with the status the change leaves), the event (with ``data``; the stream keeps its
    TTL, or gets ``retention_s``) and, if ``webhook`` asked for it, its delivery. Return ``batch``."""
    batch.require_in(job_key(job_id), "status", [status.value for status in TRANSITIONS[event]])
    hook = WEBHOOK_EVENT_OF.get(event)
    if webhook is not None and hook in webhook.events:
        queue_delivery(batch.pipeline, job_id, hook, occurred_at)
    if event in STATUS_AFTER:
        fields = {**fields, "status": STATUS_AFTER[event].value}
    if fields:
        batch.pipeline.hset(job_key(job_id), mapping=dict[Any, Any](fields))
    append_event(batch.pipeline, job_id, event, **(data or {}))
    batch.pipeline.expire(job_events_key(job_id), retention_s, nx=True)
    if event in TERMINAL_EVENTS:
        batch.job_ended(job_key(job_id), job_id)
    return batch


def append_event(
    pipeline: AnyPipeline, job_id: str, event: str, ttl_s: int | None = None, **data: Any
) -> None:
    """Append ``event`` to the job's event stream (which waiters and event streams read). With
    ``ttl_s`` (at creation), the stream gets that TTL; later events keep it."""
    events = job_events_key(job_id)
    pipeline.xadd(events, {"event": event, "data": json.dumps(data)}, maxlen=MAX_EVENTS, approximate=True)
    if ttl_s is not None:
        pipeline.expire(events, ttl_s)


def has_ended(status: str | None, rq_status: str | None) -> bool:
    """Return whether a job is over, from its record's status (None: no record, it expired) and RQ's
    (None: no RQ job); the same rule ``reconcile`` corrects records by."""
    if status is None or JobStatus(status).is_terminal:
        return True
    return (
        JobStatus(status) is JobStatus.RUNNING
        and rq_status is not None
        and status_from_rq(rq_status).is_terminal
    )


def reconcile(status: JobStatus, rq_status: str | None) -> tuple[JobStatus, JobError | None]:
    """Return the status (and error) to show for a record in ``status`` whose RQ job is in
    ``rq_status``: a terminal RQ status over a running record means the job function never
    wrote the outcome (it writes it before RQ ends the job): its worker died or was killed.

    Over a queued record it means nothing: the job is queued again and runs again (a lease expired
    and the reaper requeued it, or a Redis failover lost the claim: the run that ended was no longer
    the job's, and RQ's bookkeeping of it is stale); a job lost before it started is its lease's to
    recover."""
    if status is not JobStatus.RUNNING or rq_status is None or not status_from_rq(rq_status).is_terminal:
        return status, None
    ended = status_from_rq(rq_status)
    if ended is JobStatus.CANCELED:
        return ended, None
    return JobStatus.FAILED, JobError(name="worker_lost", message=ERRORS["worker_lost"].message)
