"""Submitting, reading and canceling jobs: ``POST /v1/generate``, ``POST /v1/upscale``,
``GET /v1/jobs/{id}``, ``POST /v1/jobs/{id}/cancel`` (and ``DELETE /v1/jobs/{id}``)."""

from __future__ import annotations

from contextlib import suppress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from api.admission import admission, spec_cost
from api.body_parsing import json_body_openapi, parse_body
from api.deps import Caller, CallerDep
from api.idempotency import idempotency_claim
from api.job_lookup import find_record
from api.submit import draft_job, submit_job
from api.waiting import prefer_wait
from latentq.contract import GenerateRequest, JobStatus, UpscaleRequest
from latentq.errors import LatentqError
from latentq.fair_share import position, refill, withdraw
from latentq.keys import image_object_keys, queue_name
from latentq.storage import STORAGE_ERRORS
from latentq.views import JobPublic, job_public, public_request, webhook_public

router = APIRouter(prefix="/v1", tags=["jobs"])

_ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"description": description}
    for status, description in [(401, "Missing or invalid API key"), (404, "No such job")]
}
_SUBMIT_RESPONSES: dict[int | str, dict] = {
    401: _ERROR_RESPONSES[401],
    200: {"description": "The original job (repeated Idempotency-Key), or the finished job (Prefer: wait)"},
    400: {"description": "Invalid request: the error names the field"},
    402: {"description": "The account's credits do not cover the job"},
    403: {"description": "The key lacks the generate scope"},
    409: {"description": "The Idempotency-Key was used with a different request"},
    429: {"description": "Over the key's rate, or the account's jobs at once"},
    503: {"description": "The model's queue is full, or Redis is unreachable"},
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
    responses=_SUBMIT_RESPONSES,
    openapi_extra=json_body_openapi(GenerateRequest),
)
async def submit_generate(
    body: GenerateBody, request: Request, response: Response, caller: CallerDep
) -> JobPublic:
    """Queue a text-to-image, image-to-image or masking job; answer 202 with the job and its ``Location``
    (200 with the original job for a repeated ``Idempotency-Key``, or with the finished job when it
    ends within ``Prefer: wait=N`` seconds)."""
    return await submit_and_answer(caller, request, response, body)


class Quote(BaseModel):
    """What a job would cost."""

    model: str = Field(description="The model the job would run on.")
    cost: float = Field(description="Credits the job costs (an unlimited account is not charged).")
    credits: float | None = Field(description="The account's credits now; null: unlimited.")


@router.post(
    "/quote",
    responses={400: _SUBMIT_RESPONSES[400], 401: _ERROR_RESPONSES[401], 403: _SUBMIT_RESPONSES[403]},
    openapi_extra=json_body_openapi(GenerateRequest),
)
async def quote(body: GenerateBody, caller: CallerDep) -> Quote:
    """Validate a ``POST /v1/generate`` body and answer what the job would cost; nothing is queued."""
    services = caller.services
    draft = await draft_job(services, caller.principal, body, webhooks=False)
    account = await run_in_threadpool(services.tenants.account, caller.owner)
    cost = spec_cost(draft.spec, services.registry)
    return Quote(model=draft.spec.model, cost=cost, credits=account["credits"])


async def read_upscale_request(request: Request) -> UpscaleRequest:
    """Parse the body as an ``UpscaleRequest``."""
    return parse_body(UpscaleRequest, await request.body())


@router.post(
    "/upscale",
    status_code=202,
    response_model=JobPublic,
    responses=_SUBMIT_RESPONSES,
    openapi_extra=json_body_openapi(UpscaleRequest),
)
async def submit_upscale(
    body: Annotated[UpscaleRequest, Depends(read_upscale_request)],
    request: Request,
    response: Response,
    caller: CallerDep,
) -> JobPublic:
    """Queue an upscale job; answers as ``POST /v1/generate`` does."""
    return await submit_and_answer(caller, request, response, body)


async def submit_and_answer(
    caller: Caller, request: Request, response: Response, body: GenerateRequest | UpscaleRequest
) -> JobPublic:
    """Submit ``body`` (``api.submit``), honouring ``Idempotency-Key`` and ``Prefer: wait=N``, and
    answer with the job: as queued (202), or the original or finished one (200)."""
    services = caller.services
    claim = idempotency_claim(request.headers.get("idempotency-key"), request.url.path, body)
    wait_s = prefer_wait(request.headers.get("prefer"))
    draft = await draft_job(services, caller.principal, body)
    terms = admission(caller.principal, services, draft.spec)
    submitted = await submit_job(
        services, caller.owner, draft, claim, wait_s, max_jobs=terms.max_jobs, cost=terms.cost
    )
    if submitted.original is not None:
        response.status_code = 200
        response.headers["Location"] = f"/v1/jobs/{submitted.original.id}"
        return await run_in_threadpool(job_public, submitted.original, services.store)
    spec, finished = submitted.spec, submitted.awaited
    response.headers["Location"] = f"/v1/jobs/{spec.job_id}"
    if wait_s:
        response.headers["Preference-Applied"] = f"wait={wait_s}"
        if finished is not None and finished.status.is_terminal:
            response.status_code = 200
            return await run_in_threadpool(job_public, finished, services.store)
    return JobPublic(
        id=spec.job_id, status=JobStatus.QUEUED, model=spec.model, images=[], error=None,
        created_at=submitted.created_at, started_at=None, finished_at=None,
        webhook=webhook_public(spec), request_id=spec.request_id, request=public_request(spec),
    )  # fmt: skip


@router.get("/jobs", responses={401: {"description": "Missing or invalid API key"}})
def list_jobs(
    caller: CallerDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[
        float | None, Query(description="next_cursor of the previous page", allow_inf_nan=False)
    ] = None,
) -> dict[str, Any]:
    """List the caller's own jobs, newest first, optionally of one ``status``; page with ``cursor``."""
    owner, before = caller.owner, cursor
    records, store = caller.services.records, caller.services.store
    page: list[JobPublic] = []
    while len(page) < limit:
        batch = records.list_ids(owner, before, 100)
        for job_id, created in batch:
            before = created
            record = records.get(job_id)
            if record is not None and (status is None or record.status is status):
                page.append(job_public(record, store))
                if len(page) == limit:
                    break
        if len(batch) < 100 or len(page) == limit:
            break
    more = len(page) == limit and bool(records.list_ids(owner, before, 1))
    return {"data": page, "next_cursor": before if more else None}


@router.get("/jobs/{job_id}", response_model=JobPublic, responses=_ERROR_RESPONSES)
def get_job(job_id: str, caller: CallerDep) -> JobPublic:
    """Return a job's status, progress (queue position, ETA), images (with fresh URLs), error and timings."""
    services = caller.services
    record = find_record(job_id, services.records, caller.owner)
    job = job_public(record, services.store)
    if record.status is JobStatus.QUEUED:
        job.queue_position = position(services.redis, queue_name(record.model), record.owner, job_id)
    return job


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=_CANCEL_RESPONSES)
@router.delete("/jobs/{job_id}", response_model=JobPublic, responses=_CANCEL_RESPONSES)
def cancel_job(job_id: str, caller: CallerDep) -> JobPublic:
    """Cancel a job that has not ended: it ends ``canceled`` at once (a queued one never starts; a
    running one stops at its next denoising step and its images are discarded). Answers with the
    canceled job; a job that had already ended is a 409 that says how, unchanged."""
    services = caller.services
    record = find_record(job_id, services.records, caller.owner)
    if not record.status.is_terminal and services.records.cancel(record.spec):
        queue = Queue(queue_name(record.model), connection=services.redis, serializer=JSONSerializer)
        in_queue = services.redis.lrem(queue.key, 1, job_id)
        if in_queue:  # its place goes to the next account's turn
            refill(services.redis, queue.name, services.settings.fair_queue_depth)
        waiting = in_queue or withdraw(services.redis, queue.name, record.owner, job_id)
        if waiting:  # it was still queued (in RQ's queue or its account's turn): RQ shows it canceled too
            with suppress(NoSuchJobError, InvalidJobOperation):
                Job.fetch(job_id, connection=services.redis, serializer=JSONSerializer).cancel()
            if record.attempt > 1:  # queued again after a lost run, which may have stored images
                keys = image_object_keys(
                    record.spec.object_folder, record.spec.samples, record.spec.output_format
                )
                with suppress(*STORAGE_ERRORS):  # S3 down: an orphan, never shown (lifecycle rule)
                    services.store.delete(keys)
        return job_public(find_record(job_id, services.records, caller.owner), services.store)
    ended = services.records.get(job_id) or record
    raise LatentqError("job_finished", f"Job {job_id} already ended {ended.status.value}; nothing to cancel.")


@router.get(
    "/jobs/{job_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "The latest preview"}, **_ERROR_RESPONSES},
)
def get_preview(job_id: str, caller: CallerDep) -> Response:
    """Return the job's latest live preview (a small JPEG), for jobs submitted with ``preview: true``."""
    records = caller.services.records
    find_record(job_id, records, caller.owner)
    data = records.get_preview(job_id)
    if data is None:
        raise LatentqError("not_found", f"Job {job_id} has no preview (yet): submit it with preview: true.")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
