"""Submitting and reading generation jobs: ``POST /v1/generate``, ``GET /v1/jobs/{id}``."""

from __future__ import annotations

import secrets
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from rq import Queue
from rq.serializers import JSONSerializer

from api.deps import ApiKeyDep, ImageStoreDep, JobRecordsDep, RedisDep, SettingsDep
from api.validation import parse_body
from latentq.contract import (
    GENERATE_TASK,
    MAX_SEED,
    GenerateRequest,
    ImagePublic,
    JobPublic,
    JobSpec,
    JobStatus,
)
from latentq.errors import LatentqError
from latentq.jobs import JobRecord
from latentq.keys import queue_name
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
    responses={**_ERROR_RESPONSES, 422: {"description": "Invalid request: the error names the field"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}},
        }
    },
)
def submit_generate(
    body: GenerateBody,
    response: Response,
    _key: ApiKeyDep,
    settings: SettingsDep,
    redis: RedisDep,
    records: JobRecordsDep,
) -> JobPublic:
    """Queue a text-to-image job; answer 202 with the job and its ``Location``."""
    spec = JobSpec(
        job_id=str(uuid.uuid4()),
        model=settings.model_id,
        **body.model_dump(exclude={"seed"}),
        seed=body.seed or secrets.randbelow(MAX_SEED) + 1,
    )
    queue = Queue(queue_name(spec.model), connection=redis, serializer=JSONSerializer)
    with redis.pipeline() as pipeline:
        # One MULTI/EXEC: the RQ job and our record exist together or not at all. RQ calls
        # pipeline.multi() itself, so it must queue its commands before ours.
        queue.enqueue_call(
            GENERATE_TASK,
            kwargs={"spec": spec.model_dump(mode="json")},
            job_id=spec.job_id,
            timeout=settings.job_timeout_s,
            result_ttl=settings.job_retention_s,
            failure_ttl=settings.job_retention_s,
            description=f"generate {spec.job_id}",
            pipeline=pipeline,
        )
        created_at = records.create(spec, pipeline)
        pipeline.execute()
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
            ImagePublic(url=store.url(image.key), seed=image.seed, width=image.width, height=image.height)
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
