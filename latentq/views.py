"""Jobs as clients see them: the public view of a job record, with freshly signed image URLs.

Used by the API (job reads, event streams) and by the webhook dispatcher (payloads).
"""

from __future__ import annotations

from datetime import datetime

from latentq.contract import (
    ImagePublic,
    JobPublic,
    JobSpec,
    JobStatus,
    Progress,
    WebhookDelivery,
    WebhookPublic,
)
from latentq.jobs import JobRecord
from latentq.storage import ImageStore


def job_public(record: JobRecord, store: ImageStore) -> JobPublic:
    """Return the client's view of ``record``, signing a URL for each image."""
    return JobPublic(
        id=record.id,
        status=record.status,
        model=record.model,
        images=[
            ImagePublic(
                url=store.url(image.key),
                seed=image.seed,
                width=image.width,
                height=image.height,
                content_type=image.content_type,
            )
            for image in record.images
        ],
        error=record.error,
        created_at=record.created_at,
        started_at=record.started_at,
        finished_at=record.finished_at,
        preview_url=f"/v1/jobs/{record.id}/preview" if record.preview_step else None,
        eta_seconds=record.eta_s if record.status is JobStatus.RUNNING and record.total_steps else None,
        timings=_timings(record),
        progress=Progress(
            step=record.step,
            total_steps=record.total_steps,
            fraction=round(record.step / record.total_steps, 4),
        )
        if record.total_steps
        else None,
        webhook=webhook_public(record.spec, record.webhook_deliveries),
        request=public_request(record.spec),
    )


def _timings(record: JobRecord) -> dict[str, float] | None:
    """The stages' milliseconds of a succeeded job, the time it waited in the queue first."""
    if record.status is not JobStatus.SUCCEEDED or not record.started_at:
        return None
    queued = datetime.fromisoformat(record.started_at) - datetime.fromisoformat(record.created_at)
    return {"queued_ms": round(queued.total_seconds() * 1000, 1), **record.timings}


def webhook_public(
    spec: JobSpec, deliveries: dict[str, WebhookDelivery] | None = None
) -> WebhookPublic | None:
    """The public view of a job's webhook and its deliveries so far, if it has one."""
    if spec.webhook is None:
        return None
    return WebhookPublic(url=spec.webhook.url, events=spec.webhook.events, deliveries=deliveries or {})


def public_request(spec: JobSpec) -> dict:
    """The parameters a job runs with, as its public view shows them (its webhook has its own field)."""
    return spec.model_dump(mode="json", exclude={"job_id", "model", "webhook"})
