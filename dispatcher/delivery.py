"""Webhook deliveries: the RQ function the dispatcher (``python -m dispatcher``) runs for each
queued job event.

Each delivery reads the job record, builds the payload
``{"type": "job.<event>", "timestamp", "data": <the job as GET /v1/jobs/{id} shows it>}``, signs
it (Standard Webhooks) with the job's API key's secret, resolves the URL once through the SSRF
guard and POSTs to that address, never following redirects. Then:

- 2xx: delivered.
- 410 Gone: the URL is disabled for the API key (``LATENTQ_WEBHOOK_DISABLED_S``), no retry.
- anything else (other status, redirect, timeout, connection or DNS error): ``started`` and
  ``completed`` are retried on ``LATENTQ_WEBHOOK_RETRY_SCHEDULE_S``; ``progress`` is not.
- a URL that resolves to a refused address: refused, no retry.

A ``started`` or ``progress`` delivery whose job has ended by the time it runs is dropped (the
``completed`` one says more). Each outcome is kept in the job record (``webhook.deliveries``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import httpx
from rq.job import Retry, get_current_job

from dispatcher.http import http_client, post
from dispatcher.metrics import POST_DURATION, note_delivery
from dispatcher.signing import signature_headers
from latentq.contract import WebhookDelivery
from latentq.leases import Leases
from latentq.logs import add_log_fields, job_log_fields
from latentq.records import JobRecords, utc_now
from latentq.redis_client import redis_client
from latentq.settings import DispatcherSettings, get_dispatcher_settings
from latentq.ssrf import UnsafeUrl, resolve
from latentq.storage import ImageStore
from latentq.views import job_public
from latentq.webhook_accounts import WebhookAccounts

log = logging.getLogger("latentq.dispatcher")

#: Events retried on the schedule when a delivery fails; progress never is.
RETRIED_EVENTS = ("started", "completed")
#: Longest error text kept in a delivery's state, characters.
MAX_ERROR_CHARS = 300


@dataclass
class Dispatcher:
    """What deliveries share: settings, job records, storage (to sign image URLs), key settings, HTTP,
    and the leases on the deliveries being sent (``latentq.leases``: a delivery whose dispatcher
    dies mid-attempt is sent again)."""

    settings: DispatcherSettings
    records: JobRecords
    store: ImageStore
    accounts: WebhookAccounts
    http: httpx.Client
    leases: Leases

    @classmethod
    def create(cls, settings: DispatcherSettings) -> Dispatcher:
        redis = redis_client(settings)
        holder = settings.dispatcher_name or f"dispatcher-{uuid.uuid4().hex[:12]}"
        # An attempt may try two addresses, each up to the timeout, before its lease must be over.
        lease_s = settings.worker_lost_s + 2 * settings.webhook_timeout_s
        return cls(
            settings,
            JobRecords(redis, settings.job_retention_s, settings.max_job_retention_s),
            ImageStore(settings),
            WebhookAccounts(redis),
            http_client(settings.webhook_timeout_s, settings.webhook_ca_file),
            Leases(redis, holder, lease_s),
        )


_current: ContextVar[Dispatcher] = ContextVar("latentq_dispatcher")


@contextmanager
def serving(dispatcher: Dispatcher) -> Iterator[Dispatcher]:
    """Make ``dispatcher`` the one ``deliver`` uses for the ``with`` block (the dispatcher's main)."""
    token = _current.set(dispatcher)
    try:
        yield dispatcher
    finally:
        _current.reset(token)


def current_dispatcher() -> Dispatcher:
    """Return the dispatcher ``serving`` set; in a plain ``rq worker`` on the webhook queue, make one
    from the environment's settings on first use and keep it for the process's main thread."""
    try:
        return _current.get()
    except LookupError:
        dispatcher = Dispatcher.create(get_dispatcher_settings())
        _current.set(dispatcher)
        return dispatcher


def deliver(job_id: str, event: str, message_id: str, occurred_at: str) -> Retry | dict[str, object]:
    """The RQ function: deliver webhook ``event`` of ``job_id`` with this process's dispatcher."""
    current, dispatcher = get_current_job(), current_dispatcher()
    # The delivery's lines name its job (and its account and request id once its record is read),
    # until the dispatcher's ``perform_job`` ends: RQ's lines about it too.
    add_log_fields(job_id=job_id, account=None, request_id=None)
    if current is None:
        return deliver_event(dispatcher, job_id, event, message_id, occurred_at, 1)
    dispatcher.leases.take([current.id])  # held while it is sent: recovered if this process dies
    try:
        attempt = (current.number_of_retries or 0) + 1
        return deliver_event(dispatcher, job_id, event, message_id, occurred_at, attempt)
    finally:
        dispatcher.leases.release([current.id])


def deliver_event(
    dispatcher: Dispatcher, job_id: str, event: str, message_id: str, occurred_at: str, attempt: int
) -> Retry | dict[str, object]:
    """Make delivery ``attempt`` (1 first) of webhook ``event`` of ``job_id``; return RQ a ``Retry``
    to try again later, or the outcome."""
    record = dispatcher.records.get(job_id)
    if record is None or record.spec.webhook is None:
        log.info("webhook %s of job %s not sent: the job expired", event, job_id)
        note_delivery(event, "expired")
        return {"state": "expired"}
    add_log_fields(**job_log_fields(record.spec))
    url = record.spec.webhook.url
    report = DeliveryAttempt(dispatcher.records, job_id, event, attempt)
    if event != "completed" and record.status.is_terminal:
        return report("dropped", error=f"the job had already ended {record.status.value}")
    if dispatcher.accounts.is_disabled(record.owner, url):
        return report("disabled", error="the URL answered 410 Gone to an earlier webhook")
    data = job_public(record, dispatcher.store).model_dump(mode="json", exclude={"webhook"})
    body = json.dumps({"type": f"job.{event}", "timestamp": occurred_at, "data": data}).encode()
    headers = signature_headers(dispatcher.accounts.signing_secrets(record.owner), message_id, body)
    status_code, error = None, None
    try:
        address = resolve(url, dispatcher.settings.webhook_allowed_hosts)
        with POST_DURATION.time():
            status_code = post(dispatcher.http, address, body, headers)
    except UnsafeUrl as refused:
        return report("refused", error=f"webhook_url: {refused}")
    except (httpx.HTTPError, OSError) as failure:
        error = f"{type(failure).__name__}: {failure}" if str(failure) else type(failure).__name__
    if status_code is not None and 200 <= status_code < 300:
        return report("delivered", status_code)
    if status_code == 410:
        dispatcher.accounts.disable(record.owner, url, dispatcher.settings.webhook_disabled_s)
        return report("disabled", status_code, "the URL answered 410 Gone: no more webhooks go to it")
    if status_code is not None:
        redirect = 300 <= status_code < 400
        error = f"the receiver answered {status_code}" + (" (redirects are not followed)" if redirect else "")
    schedule = dispatcher.settings.webhook_retry_schedule_s
    if event in RETRIED_EVENTS and report.attempt <= len(schedule):
        report("retrying", status_code, error, retry_s=schedule[report.attempt - 1])
        return Retry(max=len(schedule), interval=list(schedule))
    return report("failed", status_code, error)


@dataclass
class DeliveryAttempt:
    """One delivery attempt: calling it keeps the attempt's outcome in the job record, and logs it."""

    records: JobRecords
    job_id: str
    event: str
    attempt: int

    def __call__(
        self, state: str, status_code: int | None = None, error: str | None = None, retry_s: int | None = None
    ) -> dict[str, object]:
        delivery = WebhookDelivery(
            state=state, attempts=self.attempt, status_code=status_code,
            error=error[:MAX_ERROR_CHARS] if error else None, updated_at=utc_now(),
            next_attempt_at=utc_now(retry_s) if retry_s else None,
        )  # fmt: skip
        self.records.record_delivery(self.job_id, self.event, delivery)
        note_delivery(self.event, state)
        log.info("webhook %s of job %s, attempt %d: %s %s", self.event, self.job_id, self.attempt, state,
                 error or status_code or "")  # fmt: skip
        return delivery.model_dump()
