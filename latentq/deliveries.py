"""Webhook deliveries, queued with the job change that causes them.

A job's webhook (``webhook_url``/``webhook_events`` on its request, else its API key's default) is
part of its spec. When the job record changes in a way the webhook asked for, ``queue_delivery``
adds a delivery to the ``latentq-webhooks`` RQ queue **in the same transaction** as the change,
so an event is never recorded without its delivery or the other way round. The dispatcher
(``python -m dispatcher``, never a GPU worker) takes deliveries from that queue.
"""

from __future__ import annotations

from latentq.contract import DELIVER_FUNCTION, WebhookEvent
from latentq.keys import WEBHOOK_QUEUE
from latentq.rq_writer import AnyPipeline, queue_job

#: Seconds a delivery may wait in the queue and run before RQ gives it up (the HTTP timeout is
#: the dispatcher's ``webhook_timeout_s``, well below).
DELIVERY_JOB_TIMEOUT_S = 300
#: Seconds RQ keeps a finished delivery (for ``rq info``); failed ones stay a week.
DELIVERY_RESULT_TTL_S = 600
DELIVERY_FAILURE_TTL_S = 7 * 86400

#: The record change (job event) that triggers each webhook event.
WEBHOOK_EVENT_OF: dict[str, WebhookEvent] = {
    "started": "started",
    "progress": "progress",
    "succeeded": "completed",
    "failed": "completed",
    "canceled": "completed",
}


def message_id(job_id: str, event: WebhookEvent, step: int | None = None) -> str:
    """Return the ``webhook-id`` of ``event`` of ``job_id``: the same for every retry of it."""
    return f"msg_{job_id}_{event}" + (f"_{step}" if step is not None else "")


def queue_delivery(
    pipeline: AnyPipeline,
    job_id: str,
    event: WebhookEvent,
    occurred_at: str,
    step: int | None = None,
) -> None:
    """Queue the delivery of ``event`` of ``job_id`` (which happened at ``occurred_at``) on ``pipeline``,
    to run with the record change queued there."""
    queue_job(
        pipeline,
        WEBHOOK_QUEUE,
        DELIVER_FUNCTION,
        {
            "job_id": job_id,
            "event": event,
            "message_id": message_id(job_id, event, step),
            "occurred_at": occurred_at,
        },
        timeout=DELIVERY_JOB_TIMEOUT_S,
        result_ttl=DELIVERY_RESULT_TTL_S,
        failure_ttl=DELIVERY_FAILURE_TTL_S,
        description=f"webhook {event} of job {job_id}",
    )
