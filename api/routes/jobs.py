"""Submitting and reading generation jobs: ``POST /v1/generate``, ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from api.deps import ApiKeyDep, ImageStoreDep, JobRecordsDep, RedisDep, RegistryDep, SettingsDep
from api.submission import build_spec, enqueue_job, resolve_model
from api.validation import json_body_openapi, parse_body
from latentq.contract import GenerateRequest, ImagePublic, JobPublic, JobSpec, JobStatus
from latentq.errors import LatentqError
from latentq.jobs import JobRecord
from latentq.storage import ImageStore

router = APIRouter(prefix="/v1", tags=["jobs"])

_ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"description": description}
    for status, description in [(401, "Missing or invalid API key"), (404, "No such job")]
}


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
) -> JobPublic:
    """Queue a text-to-image job; answer 202 with the job and its ``Location``."""
    spec = build_spec(body, resolve_model(registry, body.model))
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
def get_job(job_id: str, _key: ApiKeyDep, records: JobRecordsDep, store: ImageStoreDep) -> JobPublic:
    """Return a job's status, images (with fresh URLs) and error."""
    record = records.get(job_id) if _is_job_id(job_id) else None
    if record is None:
        raise LatentqError("not_found", f"No job with id '{job_id}' (it may have expired).")
    return job_public(record, store)


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
        request=_public_request(record.spec),
    )


def _public_request(spec: JobSpec) -> dict:
    return spec.model_dump(mode="json", exclude={"job_id", "model"})


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
