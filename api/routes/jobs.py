"""Submitting, reading and canceling jobs: ``POST /v1/generate``, ``POST /v1/upscale``,
``GET /v1/jobs/{id}``, ``POST /v1/jobs/{id}/cancel`` (and ``DELETE /v1/jobs/{id}``)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import suppress
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request, Response
from rq import Queue
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from starlette.concurrency import run_in_threadpool

from api.deps import (
    ApiKeyDep,
    ImageStoreDep,
    JobRecordsDep,
    JobServices,
    RedisDep,
    get_job_services,
    key_owner,
    require_api_key,
)
from api.idempotency import check_key, claim, fingerprint, original_record, prefer_wait, release
from api.job_views import find_record
from api.submission import enqueue_job, prepare_job, prepare_upscale
from api.validation import json_body_openapi, parse_body
from api.waiting import wait_for_job
from latentq.contract import (
    GenerateRequest,
    JobSpec,
    JobStatus,
    UpscaleRequest,
    WebhookFields,
    WebhookTarget,
)
from latentq.errors import LatentqError
from latentq.keys import queue_name
from latentq.views import JobPublic, job_public, public_request, webhook_public
from latentq.webhooks import default_webhook, webhook_target

router = APIRouter(prefix="/v1", tags=["jobs"])

_ERROR_RESPONSES: dict[int | str, dict] = {
    status: {"description": description}
    for status, description in [(401, "Missing or invalid API key"), (404, "No such job")]
}
_SUBMIT_RESPONSES: dict[int | str, dict] = {
    **_ERROR_RESPONSES,
    200: {"description": "The original job (repeated Idempotency-Key), or the finished job (Prefer: wait)"},
    400: {"description": "Invalid request: the error names the field"},
    409: {"description": "The Idempotency-Key was used with a different request"},
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
async def submit_generate(body: GenerateBody, submission: SubmissionDep) -> JobPublic:
    """Queue a text-to-image, image-to-image or masking job; answer 202 with the job and its ``Location``
    (200 with the original job for a repeated ``Idempotency-Key``, or with the finished job when it
    ends within ``Prefer: wait=N`` seconds)."""
    max_retention_s = submission.services.settings.max_job_retention_s
    return await submission.submit(
        lambda: prepare_job(body, submission.services.registry, submission.services.store, max_retention_s),
        body,
        stores_images=body.init_image is not None,
    )


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
    body: Annotated[UpscaleRequest, Depends(read_upscale_request)], submission: SubmissionDep
) -> JobPublic:
    """Queue an upscale job; answers as ``POST /v1/generate`` does."""
    return await submission.submit(
        lambda: prepare_upscale(body, submission.services.registry, submission.services.store),
        body,
        stores_images=True,
    )


class Submission:
    """Queues a job for a submit route, honouring ``Idempotency-Key`` and ``Prefer: wait=N``."""

    def __init__(self, request: Request, response: Response, owner: str, services: JobServices) -> None:
        self.request, self.response, self.owner = request, response, owner
        self.services = services

    async def submit(
        self, prepare: Callable[[], JobSpec], body: WebhookFields, stores_images: bool
    ) -> JobPublic:
        """Resolve the job with ``prepare``, queue it (once per idempotency key) and answer with it.

        ``prepare`` runs in the thread pool when it decodes and stores input images; otherwise it is
        a few checks and runs on the event loop. A job that names no webhook is then queued in one
        Redis round trip, on the condition that the key has no default webhook (else it takes the
        default, at the cost of two more)."""
        idempotency = self.request.headers.get("idempotency-key")
        if idempotency is not None:
            check_key(idempotency)
        wait_s = prefer_wait(self.request.headers.get("prefer"))
        names_webhook = body.webhook_url is not None or body.webhook_events is not None
        webhook = await self.webhook(body) if names_webhook else None  # first: it is cheap to refuse
        spec = await run_in_threadpool(prepare) if stores_images else prepare()
        if webhook is not None:
            spec = spec.model_copy(update={"webhook": webhook})
        self.response.headers["Location"] = f"/v1/jobs/{spec.job_id}"
        if idempotency is not None:
            body_print = fingerprint(self.request.url.path, body.model_dump_json())
            original = await run_in_threadpool(
                claim, self.services.redis, self.owner, idempotency, body_print, spec.job_id
            )
            if original is not None:
                self.response.status_code = 200
                self.response.headers["Location"] = f"/v1/jobs/{original}"
                record = await run_in_threadpool(original_record, self.services.records, original)
                return await run_in_threadpool(job_public, record, self.services.store)
        try:
            created_at = await enqueue_job(spec, self.services, self.owner, not names_webhook)
            if created_at is None:  # the key has a default webhook: the job takes it
                spec = spec.model_copy(update={"webhook": await self.webhook(body)})
                created_at = await enqueue_job(spec, self.services, self.owner)
        except BaseException:
            if idempotency is not None:
                await run_in_threadpool(release, self.services.redis, self.owner, idempotency)
            raise
        assert created_at is not None
        if wait_s:
            self.response.headers["Preference-Applied"] = f"wait={wait_s}"
            finished = await wait_for_job(
                self.services.async_redis, self.services.records, spec.job_id, wait_s
            )
            if finished is not None and finished.status.is_terminal:
                self.response.status_code = 200
                return await run_in_threadpool(job_public, finished, self.services.store)
        return JobPublic(
            id=spec.job_id, status=JobStatus.QUEUED, model=spec.model, images=[], error=None,
            created_at=created_at, started_at=None, finished_at=None, webhook=webhook_public(spec),
            request=public_request(spec),
        )  # fmt: skip

    async def webhook(self, body: WebhookFields) -> WebhookTarget | None:
        """Return the job's webhook: the request's, else the key's default."""
        default = None
        if body.webhook_url is None:
            default = await default_webhook(self.services.async_redis, self.owner)
        allowed = self.services.settings.webhook_allowed_hosts
        return webhook_target(body.webhook_url, body.webhook_events, default, allowed)


async def get_submission(request: Request, response: Response) -> Submission:
    """Return the submission of this request, for its API key (one dependency, no thread: no I/O)."""
    key = await require_api_key(request)
    return Submission(request, response, key_owner(key), await get_job_services(request))


SubmissionDep = Annotated[Submission, Depends(get_submission)]


@router.get("/jobs", responses={401: {"description": "Missing or invalid API key"}})
def list_jobs(
    key: ApiKeyDep,
    records: JobRecordsDep,
    store: ImageStoreDep,
    status: JobStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[float | None, Query(description="next_cursor of the previous page")] = None,
) -> dict[str, Any]:
    """List the caller's own jobs, newest first, optionally of one ``status``; page with ``cursor``."""
    owner, before = key_owner(key), cursor
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
def get_job(
    job_id: str, key: ApiKeyDep, redis: RedisDep, records: JobRecordsDep, store: ImageStoreDep
) -> JobPublic:
    """Return a job's status, progress (queue position, ETA), images (with fresh URLs), error and timings."""
    record = find_record(job_id, records, key)
    job = job_public(record, store)
    if record.status is JobStatus.QUEUED:
        queue = Queue(queue_name(record.model), connection=redis, serializer=JSONSerializer)
        job.queue_position = queue.get_job_position(job_id)
    return job


@router.post("/jobs/{job_id}/cancel", response_model=JobPublic, responses=_CANCEL_RESPONSES)
@router.delete("/jobs/{job_id}", response_model=JobPublic, responses=_CANCEL_RESPONSES)
def cancel_job(
    job_id: str, key: ApiKeyDep, redis: RedisDep, records: JobRecordsDep, store: ImageStoreDep
) -> JobPublic:
    """Cancel a job: a queued one never starts; a running one stops at its next denoising step and
    ends ``canceled``. Answers with the job as it stands; a finished job is a 409, unchanged."""
    record = find_record(job_id, records, key)
    if record.status.is_terminal:
        raise LatentqError(
            "job_finished", f"Job {job_id} already ended {record.status.value}; nothing to cancel."
        )
    records.request_cancel(job_id)  # seen by the worker before it starts and at the next step
    if record.status is JobStatus.QUEUED:
        with suppress(NoSuchJobError, InvalidJobOperation):
            Job.fetch(job_id, connection=redis, serializer=JSONSerializer).cancel()
        records.mark_canceled(job_id)
    return job_public(find_record(job_id, records, key), store)


@router.get(
    "/jobs/{job_id}/preview",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}, "description": "The latest preview"}, **_ERROR_RESPONSES},
)
def get_preview(job_id: str, key: ApiKeyDep, records: JobRecordsDep) -> Response:
    """Return the job's latest live preview (a small JPEG), for jobs submitted with ``preview: true``."""
    find_record(job_id, records, key)
    data = records.get_preview(job_id)
    if data is None:
        raise LatentqError("not_found", f"Job {job_id} has no preview (yet): submit it with preview: true.")
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "no-store"})
