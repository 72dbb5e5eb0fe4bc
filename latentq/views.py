"""Jobs as clients see them: the public view of a job record (``JobPublic``), with freshly signed
image URLs.

Used by the API (job reads, event streams) and by the webhook dispatcher (payloads).
"""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from latentq.contract import JobError, JobSpec, JobStatus, WebhookDelivery, WebhookEvent
from latentq.records import JobRecord
from latentq.storage import ImageStore


class ImagePublic(BaseModel):
    """An image as clients see it."""

    url: str
    seed: int
    width: int
    height: int
    content_type: str
    nsfw: bool | None = Field(
        None, description="Whether the model's safety checker flagged the image; null: not checked."
    )
    filtered: bool = Field(
        False, description="Whether the image was flagged and replaced by a black one (safety: filter)."
    )


class Progress(BaseModel):
    """How far a job's denoising has come."""

    step: int
    total_steps: int
    fraction: float


class WebhookPublic(BaseModel):
    """A job's webhook: where its events go and how each event type's delivery went."""

    url: str
    events: list[WebhookEvent]
    deliveries: dict[str, WebhookDelivery] = Field(
        default_factory=dict, description="By event type: started, progress, completed."
    )


class JobPublic(BaseModel):
    """A job as clients see it (``GET /v1/jobs/{id}``, and the answer to a submit)."""

    id: str
    status: JobStatus
    model: str
    images: list[ImagePublic]
    error: JobError | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    progress: Progress | None = Field(None, description="Denoising steps done, once sampling has begun.")
    queue_position: int | None = Field(None, description="While queued: jobs ahead of this one in its queue.")
    preview_url: str | None = Field(None, description="The latest live preview (JPEG), when asked for.")
    eta_seconds: float | None = Field(None, description="While running: estimated seconds of sampling left.")
    timings: dict[str, float] | None = Field(
        None,
        description="Once succeeded, milliseconds: queued_ms, load_ms, sampling_ms, encode_ms, upload_ms.",
    )
    batch_size: int | None = Field(
        None,
        description="Once succeeded: jobs sampled in the same pipeline call as this one, itself included.",
    )
    attempt: int = Field(
        1, description="Which run of the job this is: 1, or more after a worker running it was lost."
    )
    webhook: WebhookPublic | None = Field(None, description="The job's webhook and its deliveries, if any.")
    request_id: str | None = Field(
        None, description="The X-Request-Id of the request that submitted the job (its log lines carry it)."
    )
    request: dict = Field(
        description="The parameters the job runs with: defaults filled, style applied, seed chosen."
    )


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
                nsfw=image.nsfw,
                filtered=image.filtered,
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
        batch_size=record.batch_size if record.status is JobStatus.SUCCEEDED else None,
        attempt=record.attempt,
        webhook=webhook_public(record.spec, record.webhook_deliveries),
        request_id=record.spec.request_id,
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
    return spec.model_dump(mode="json", exclude={"job_id", "model", "webhook", "folder", "request_id"})
