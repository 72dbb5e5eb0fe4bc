"""Jobs as clients see them: looking a record up for a caller, and its public view."""

from __future__ import annotations

import uuid
from datetime import datetime

from api.deps import key_owner
from latentq.contract import ImagePublic, JobPublic, JobSpec, JobStatus, Progress
from latentq.errors import LatentqError
from latentq.jobs import JobRecord, JobRecords
from latentq.storage import ImageStore


def find_record(job_id: str, records: JobRecords, api_key: str) -> JobRecord:
    """Return the record of ``job_id`` if it belongs to ``api_key``; else raise ``not_found`` (another
    key's job reads exactly like one that does not exist)."""
    record = records.get(job_id) if _is_job_id(job_id) else None
    if record is None or record.owner not in ("", key_owner(api_key)):
        raise LatentqError("not_found", f"No job with id '{job_id}' (it may have expired).")
    return record


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
        request=public_request(record.spec),
    )


def _timings(record: JobRecord) -> dict[str, float] | None:
    """The stages' milliseconds of a succeeded job, the time it waited in the queue first."""
    if record.status is not JobStatus.SUCCEEDED or not record.started_at:
        return None
    queued = datetime.fromisoformat(record.started_at) - datetime.fromisoformat(record.created_at)
    return {"queued_ms": round(queued.total_seconds() * 1000, 1), **record.timings}


def public_request(spec: JobSpec) -> dict:
    return spec.model_dump(mode="json", exclude={"job_id", "model"})


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
