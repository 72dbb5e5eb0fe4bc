"""Submitting and reading generation jobs: ``POST /v1/generate``, ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import uuid
from contextlib import suppress
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from redis import Redis
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from api.deps import ApiKeyDep, ImageStoreDep, JobRecordsDep, RedisDep, RegistryDep, SettingsDep
from api.submission import enqueue_job, prepare_job, prepare_upscale
from api.validation import json_body_openapi, parse_body
from latentq.contract import (
    GenerateRequest,
    ImagePublic,
    JobPublic,
    JobSpec,
    JobStatus,
    Progress,
    UpscaleRequest,
)
from latentq.errors import LatentqError
from latentq.jobs import JobRecord, JobRecords
from latentq.keys import queue_name
from latentq.settings import ApiSettings
from latentq.storage import ImageStore

router = APIRouter(prefix="/v1", tags=["jobs"])

_ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"description": description}
    for status, description in [(401, "Missing or invalid API key"), (404, "No such job")]
}
_CANCEL_RESPONSES: dict[int | str, dict] = {**_ERROR_RESPONSES, 409: {"description": "The job already ended"}}


async def read_generate_request(request: Request) -> GenerateRequest:
    """Parse the body as a ``GenerateRequest``; curl's default form Content-Type is tolerated."""
    return parse_body(GenerateRequest, await request.body())


GenerateBody = Annotated[GenerateRequest, Depends(read_generate_request)]


@router.post(
    "/generate",
    status_code=202,
    response_model=JobPublic,
    responses={**_ERROR_RESPONSES, 400: {"description": "Invalid request: the error names the field"}},
    openapi_extra=json_body_openapi(GenerateRequest),
)
def submit_generate(
    body: GenerateBody,
    response: Response,
    _key: ApiKeyDep,
    settings: SettingsDep,
    registry: RegistryDep,
    redis: RedisDep,
    records: JobRecordsDep,
    store: ImageStoreDep,
) -> JobPublic:
    """Queue a text-to-image, image-to-image or masking job; answer 202 with the job and its ``Location``."""
    return queued(prepare_job(body, registry, store), response, settings, redis, records)


async def read_upscale_request(request: Request) -> UpscaleRequest:
    """Parse the body as an ``UpscaleRequest``."""
    return parse_body(UpscaleRequest, await request.body())


@router.post(
    "/upscale",
    status_code=202,
    response_model=JobPublic,
    responses={**_ERROR_RESPONSES, 400: {"description": "Invalid request: the error names the field"}},
    openapi_extra=json_body_openapi(UpscaleRequest),
)
def submit_upscale(
    body: Annotated[UpscaleRequest, Depends(read_upscale_request)],
    response: Response,
    _key: ApiKeyDep,
    settings: SettingsDep,
    registry: RegistryDep,
    redis: RedisDep,
    records: JobRecordsDep,
    store: ImageStoreDep,
) -> JobPublic:
    """Queue an upscale job; answer 202 with the job and its ``Location``."""
    return queued(prepare_upscale(body, registry, store), response, settings, redis, records)


def queued(
    spec: JobSpec, response: Response, settings: ApiSettings, redis: Redis, records: JobRecords
) -> JobPublic:
    """Enqueue ``spec``; return its public view and set the ``Location`` header."""
    created_at = enqueue_job(spec, settings, redis, records)
    response.headers["Location"] = f"/v1/jobs/{spec.job_id}"
    return JobPublic(
        id=spec.job_id,
        status=JobStatus.QUEUED,
        model=spec.model,
        images=[],
        error=None,
        created_at=created_at,
        started_at=None,
        finished_at=None,
        request=_public_request(spec),
    )


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=_ERROR_RESPONSES)
def get_job(
    job_id: str, _key: ApiKeyDep, redis: RedisDep, records: JobRecordsDep, store: ImageStoreDep
) -> JobPublic:
    """Return a job's status, progress (queue position, ETA), images (with fresh URLs), error and timings."""
    record = find_record(job_id, records)
    job = job_public(record, store)
    if record.status is JobStatus.QUEUED:
        queue = Queue(queue_name(record.model), connection=redis, serializer=JSONSerializer)
        job.queue_position = queue.get_job_position(job_id)
    return job


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=_CANCEL_RESPONSES)
@router.delete("/jobs/{job_id}", response_model=JobPublic, responses=_CANCEL_RESPONSES)
def cancel_job(
    job_id: str, _key: ApiKeyDep, redis: RedisDep, records: JobRecordsDep, store: ImageStoreDep
) -> JobPublic:
    """Cancel a job: a queued one never starts; a running one stops at its next denoising step and
    ends ``canceled``. Answers with the job as it stands; a finished job is a 409, unchanged."""
    record = find_record(job_id, records)
    if record.status.is_terminal:
        raise LatentqError(
            "job_finished", f"Job {job_id} already ended {record.status.value}; nothing to cancel."
        )
    records.request_cancel(job_id)  # the worker checks this before it starts and at every step
    if record.status is JobStatus.QUEUED:
        with suppress(NoSuchJobError, InvalidJobOperation):
            Job.fetch(job_id, connection=redis, serializer=JSONSerializer).cancel()
        records.mark_canceled(job_id)
    return job_public(find_record(job_id, records), store)


def find_record(job_id: str, records: JobRecords) -> JobRecord:
    """Return the record of ``job_id``; raise ``not_found`` when there is none (or the id is malformed)."""
    record = records.get(job_id) if _is_job_id(job_id) else None
    if record is None:
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
        eta_seconds=record.eta_s if record.status is JobStatus.RUNNING and record.total_steps else None,
        timings=_timings(record),
        progress=Progress(
            step=record.step,
            total_steps=record.total_steps,
            fraction=round(record.step / record.total_steps, 4),
        )
        if record.total_steps
        else None,
        request=_public_request(record.spec),
    )


def _timings(record: JobRecord) -> dict[str, float] | None:
    """The stages' milliseconds of a succeeded job, the time it waited in the queue first."""
    if record.status is not JobStatus.SUCCEEDED or not record.started_at:
        return None
    queued = datetime.fromisoformat(record.started_at) - datetime.fromisoformat(record.created_at)
    return {"queued_ms": round(queued.total_seconds() * 1000, 1), **record.timings}


def _public_request(spec: JobSpec) -> dict:
    return spec.model_dump(mode="json", exclude={"job_id", "model"})


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
