"""The one submit path of every API style (ours, Stability's, and later ones): draft the job, then
claim its idempotency key, store its input images, queue it, and optionally wait for it.

Input images are uploaded only once the idempotency claim succeeds, so a repeated key uploads
nothing. A job that names no webhook is queued in one Redis round trip on the condition that its
API key has no default webhook (else it takes the default, at the cost of two more).
"""

from __future__ import annotations

import time
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from PIL.Image import Image
from starlette.concurrency import run_in_threadpool

from api.idempotency import IdempotencyClaim, claim, claim_name, original_record, release, take_over
from api.job_specs import JobDraft, carries_images, validate_request
from api.metrics import JOBS_SUBMITTED
from api.rate_limit import DEFERRED
from api.request_ids import current_request_id
from api.services import Services
from api.uploads import png_bytes
from api.waiting import wait_for_job
from api.webhook_targets import default_webhook, webhook_target
from latentq.accounts import MILLI, Principal
from latentq.command_batch import CommandBatch
from latentq.contract import GENERATE_FUNCTION, GenerateRequest, JobSpec, UpscaleRequest
from latentq.errors import LatentqError
from latentq.fair_share import fair_prefix, pending_key
from latentq.keys import (
    account_active_key,
    account_key,
    drained_key,
    owner_webhook_key,
    queue_name,
    rq_queue_key,
)
from latentq.records import JobRecord
from latentq.rq_writer import queue_job
from latentq.storage import STORAGE_ERRORS, ImageStore
from latentq.webhook_accounts import ensure_secret


class UnreplicatedJob(LatentqError):
    """A submit whose writes no replica acknowledged in time (``ApiSettings.redis_wait_replicas``):
    answered 503, as a failover could lose the job; the master may still run it."""


@dataclass(frozen=True)
class Submitted:
    """What a submit did: queued the job, or found the original job of a repeated idempotency key."""

    #: The spec of the job queued (its webhook attached); for a repeat, of the job not queued.
    spec: JobSpec
    #: When the queued job's record was created ("" for a repeat).
    created_at: str = ""
    #: For a repeated idempotency key: the original job's record (nothing was queued).
    original: JobRecord | None = None
    #: After a wait: the job's record as it stood when the wait ended (terminal or not).
    awaited: JobRecord | None = None


async def draft_job(
    services: Services, principal: Principal, request: GenerateRequest | UpscaleRequest, webhooks: bool = True
) -> JobDraft:
    """Validate ``principal``'s ``request`` (``api.job_specs``), off the event loop when it decodes
    images. Without ``webhooks`` the job has none. The job carries the id of the HTTP request being
    served (``api.request_ids``)."""
    default = None
    if webhooks and request.webhook_url is None and request.webhook_events is not None:
        default = await default_webhook(services.async_redis, principal.account)  # events for its URL
    validate = partial(
        validate_request, request, services.registry, services.settings, principal.handle, default, webhooks,
        current_request_id(),
    )  # fmt: skip
    return await run_in_threadpool(validate) if carries_images(request) else validate()


async def submit_job(
    services: Services,
    owner: str,
    draft: JobDraft,
    idempotency: IdempotencyClaim | None = None,
    wait_s: float = 0.0,
    slot_held: bool = False,
    max_jobs: int | None = None,
    cost: int | None = None,
) -> Submitted:
    """Queue ``draft`` for account ``owner``, once per idempotency key, while the account has
    fewer than ``max_jobs`` queued and running (None: no cap) and credits for ``cost`` thousandths
    (None: free), and wait up to ``wait_s`` seconds for it to end (0: no wait) in a wait slot
    (``slot_held``: the caller holds one for it; else one is taken, and without one the answer
    does not wait)."""
    spec = draft.spec
    if idempotency is not None:
        record = await run_in_threadpool(claim_or_original, services, owner, idempotency, draft)
        if record is not None:
            return Submitted(spec, original=record)
    try:
        if draft.uploads:
            rate = DEFERRED.get()  # counted before any upload, not after
            if (
                rate is not None
                and rate.verdict is None
                and not (await services.limiter.check(rate)).admitted
            ):
                raise rate.refusal()
            await run_in_threadpool(store_inputs, services.store, draft.uploads)
        claimed = claim_name(owner, idempotency.key) if idempotency is not None else None
        spec, created_at = await enqueue_draft(services, owner, draft, claimed, max_jobs, cost)
    except BaseException as error:
        # A job queued on the master but not on a replica may still run: its key and inputs stay.
        unreplicated = isinstance(error, UnreplicatedJob)
        if idempotency is not None and not unreplicated:
            await run_in_threadpool(release, services.redis, owner, idempotency.key, spec.job_id)
        if (
            draft.uploads and isinstance(error, LatentqError) and not unreplicated
        ):  # refused: its inputs are no job's
            with suppress(*STORAGE_ERRORS):  # (S3 down: orphans, until the lifecycle rule)
                await run_in_threadpool(services.store.delete, list(draft.uploads))
        raise
    if not wait_s:
        return Submitted(spec, created_at)
    if not slot_held:
        try:
            services.slots.take(owner)
        except LatentqError:  # no slot to wait in: the job is queued all the same, answered as it is
            return Submitted(spec, created_at)
    try:
        awaited = await wait_for_job(services.wait_redis, services.records, spec.job_id, wait_s)
    finally:
        if not slot_held:
            services.slots.give_back(owner)
    return Submitted(spec, created_at, awaited=awaited)


def claim_or_original(
    services: Services, owner: str, idempotency: IdempotencyClaim, draft: JobDraft
) -> JobRecord | None:
    """Claim the idempotency key for ``draft``'s job for its retention; return the original job's
    record if an earlier request holds the key (None: the key is now this job's)."""
    spec = draft.spec
    ttl_s = spec.retention_s or services.settings.job_retention_s
    for _ in range(3):
        original = claim(services.redis, owner, idempotency.key, idempotency.fingerprint, spec.job_id, ttl_s)
        if original is None:
            return None
        record = original_record(services.records, original)
        if record is not None:
            return record
        # The original request died before queueing its job: this one makes it.
        if take_over(services.redis, owner, idempotency.key, original, spec.job_id, ttl_s):
            return None
    raise LatentqError("service_unavailable", "Could not claim the idempotency key; retry.")


def store_inputs(store: ImageStore, uploads: dict[str, Image]) -> None:
    """Store each of ``uploads`` as a PNG under its object key."""
    for key, image in uploads.items():
        store.put(key, png_bytes(image), "image/png")


async def enqueue_draft(
    services: Services,
    owner: str,
    draft: JobDraft,
    claimed: str | None = None,
    max_jobs: int | None = None,
    cost: int | None = None,
) -> tuple[JobSpec, str]:
    """Queue ``draft``'s job, with its key's default webhook if it takes one, and (with ``claimed``,
    the Redis key of its idempotency claim) only while the claim still names it; return the spec
    queued and its record's created_at."""
    created_at = await enqueue_job(
        draft.spec, services, owner, draft.takes_default_webhook, claimed, max_jobs=max_jobs, cost=cost
    )
    if created_at is not None:
        return draft.spec, created_at
    spec = draft.spec
    if draft.takes_default_webhook:  # the key has a default webhook: the job takes it
        default = await default_webhook(services.async_redis, owner)
        allowed = services.settings.webhook_allowed_hosts
        spec = spec.model_copy(update={"webhook": webhook_target(None, None, default, allowed)})
        created_at = await enqueue_job(spec, services, owner, claimed=claimed, max_jobs=max_jobs, cost=cost)
    if created_at is None:  # this request was so slow that a retry took its key over
        raise LatentqError("service_unavailable", "This request's Idempotency-Key went to a retry; retry.")
    return spec, created_at


async def enqueue_job(
    spec: JobSpec,
    services: Services,
    owner: str = "",
    unless_default_webhook: bool = False,
    claimed: str | None = None,
    max_jobs: int | None = None,
    cost: int | None = None,
) -> str | None:
    """Queue ``spec`` on its model's queue with its job record; return the record's created_at.

    One round trip on the asyncio client, with no thread, and one reply (``CommandBatch``): the
    RQ job (as RQ writes it, ``latentq.rq_writer``), our record, its place among ``owner``'s active
    jobs, its charge of ``cost`` thousandths of a credit (None: free) and, for a job with a
    webhook, the owner's signing secret exist together or not at all. Refused with ``queue_full``
    when the model's queue holds ``max_queue_depth`` jobs, ``too_many_jobs`` when ``owner`` has
    ``max_jobs`` queued and running, ``insufficient_balance`` when its credits do not cover
    ``cost``. With ``unless_default_webhook``, nothing is queued and None returned if ``owner`` has
    a default webhook (which the job must take); with ``claimed``, likewise unless that
    idempotency claim names the job."""
    settings = services.settings
    retention_s = spec.retention_s or settings.job_retention_s
    batch = CommandBatch()
    checks = []  # the name of each condition's refusal, in order
    rate = DEFERRED.get()  # the request's rate check, made here: one round trip for both
    if rate is not None and rate.verdict is None:
        rate.add_to(batch)
        checks.append("rate_limited")
    else:
        rate = None
    checks.append("queue_full")
    queue = queue_name(spec.model)
    fair = settings.fair_queue_depth > 0 and bool(owner)
    batch.require_shorter(rq_queue_key(queue), settings.max_queue_depth, pending_key(queue) if fair else "")
    active = account_active_key(owner)
    if max_jobs is not None:
        batch.require_fewer(active, max_jobs)
        checks.append("too_many_jobs")
    if cost is not None:
        batch.require_covering(account_key(owner), "balance", cost)
        checks.append("insufficient_balance")
    arguments = {"spec": spec.model_dump(mode="json")}
    queue_job(
        batch.pipeline, queue, GENERATE_FUNCTION, arguments, job_id=spec.job_id,
        timeout=settings.job_timeout_s, result_ttl=retention_s, failure_ttl=retention_s,
        description=f"generate {spec.job_id}", push=not fair,
    )  # fmt: skip
    if fair:  # it waits its account's turn (moved on to RQ's queue at once while that is short)
        batch.hold(fair_prefix(queue), rq_queue_key(queue), owner, spec.job_id, settings.fair_queue_depth)
    created_at = services.records.create(spec, batch.pipeline, owner, cost or 0)
    if max_jobs is not None:  # a capped account counts its active jobs (an uncapped one need not)
        now = time.time()
        batch.pipeline.zremrangebyscore(active, "-inf", now)  # lapsed without ending: drop
        batch.pipeline.zadd(active, {spec.job_id: now + retention_s})
        batch.pipeline.expire(active, settings.max_job_retention_s)
    if cost:
        batch.charge(owner, cost, spec.job_id)
    if spec.webhook is not None:  # its deliveries are signed with the owner's secret
        ensure_secret(batch.pipeline, owner)
    if unless_default_webhook:
        batch.require_absent(owner_webhook_key(owner), "url")
    if claimed is not None:
        batch.require_containing(claimed, spec.job_id)
    ran = await batch.run_async(
        services.async_redis, settings.replicas_to_wait_for, settings.redis_replica_wait_ms
    )
    if ran and not batch.replicated:
        raise UnreplicatedJob(
            "service_unavailable",
            "The job store could not copy this job to a replica in time (a failover may be under way); "
            "retry, with the same Idempotency-Key to avoid a second job.",
            retry_after_s=1,
        )
    refusal = checks[batch.failed - 1] if batch.failed and batch.failed <= len(checks) else None
    if rate is not None:
        rate.settle(batch, admitted=refusal != "rate_limited")
        if refusal == "rate_limited":
            raise rate.refusal()
    if ran:
        JOBS_SUBMITTED.labels(spec.model, spec.task).inc()
        return created_at
    if refusal is not None:
        raise await _refusal(refusal, services, spec.model, owner, max_jobs, cost)
    return None


async def _refusal(
    name: str, services: Services, model: str, owner: str, max_jobs: int | None, cost: int | None
) -> LatentqError:
    """The error a submit refused by its script's condition ``name`` answers with."""
    if name == "queue_full":
        wait_s = await drain_wait_s(services, model)
        depth = services.settings.max_queue_depth
        return LatentqError(
            "queue_full",
            f"The queue of model '{model}' holds {depth} jobs, as many as it may; retry in {wait_s:.0f} s.",
            retry_after_s=wait_s,
        )
    if name == "too_many_jobs":
        return LatentqError(
            "too_many_jobs",
            f"This account has {max_jobs} jobs queued or running, as many as it may; "
            "submit more as they end.",
            retry_after_s=5,
        )
    assert name == "insufficient_balance" and cost is not None
    balance = int(await services.async_redis.hget(account_key(owner), "balance") or 0)
    return LatentqError(
        "insufficient_balance",
        f"This job costs {cost / MILLI:g} credits; the account has {balance / MILLI:g}.",
        cost=cost / MILLI,
        credits=balance / MILLI,
    )


async def drain_wait_s(services: Services, model: str) -> float:
    """Seconds until ``model``'s queue has room again, at the rate jobs ended over the last 30 s
    (1 to 60; 30 when none ended)."""
    bucket = int(time.time()) // 10
    counts = await services.async_redis.mget([drained_key(model, bucket - back) for back in range(3)])
    ended = sum(int(count or 0) for count in counts)
    if not ended:
        return 30.0
    return min(60.0, max(1.0, 30.0 / ended))
