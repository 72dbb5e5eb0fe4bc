"""The webhook dispatcher: ``python -m latentq.dispatcher`` delivers queued job events.

It is an RQ worker on the ``latentq-webhooks`` queue only (never a GPU worker's queue), with RQ's
scheduler for retries. Each delivery reads the job record, builds the payload
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
Run several dispatchers to deliver in parallel; SIGTERM lets the current delivery finish.
"""

from __future__ import annotations

import json
import logging
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import certifi
import httpx
from redis import Redis
from rq import Queue, SimpleWorker
from rq.job import Retry, get_current_job
from rq.serializers import JSONSerializer

import latentq
from latentq.contract import WebhookDelivery
from latentq.jobs import JobRecords, utc_now
from latentq.keys import WEBHOOK_QUEUE
from latentq.settings import DispatcherSettings, get_dispatcher_settings
from latentq.ssrf import Target, UnsafeUrl, resolve
from latentq.storage import ImageStore
from latentq.views import job_public
from latentq.webhooks import WebhookAccounts, signature_headers

log = logging.getLogger("latentq.dispatcher")

#: Events retried on the schedule when a delivery fails; progress never is.
RETRIED_EVENTS = ("started", "completed")
#: Longest error text kept in a delivery's state, characters.
MAX_ERROR_CHARS = 300


@dataclass
class Dispatcher:
    """What deliveries share: settings, job records, storage (to sign image URLs), key settings, HTTP."""

    settings: DispatcherSettings
    records: JobRecords
    store: ImageStore
    accounts: WebhookAccounts
    http: httpx.Client

    @classmethod
    def create(cls, settings: DispatcherSettings) -> Dispatcher:
        redis = Redis.from_url(settings.redis_url)
        return cls(
            settings,
            JobRecords(redis, settings.job_retention_s, settings.max_job_retention_s),
            ImageStore(settings),
            WebhookAccounts(redis),
            http_client(settings.webhook_timeout_s, settings.webhook_ca_file),
        )


def http_client(timeout_s: float, ca_file: Path | None = None) -> httpx.Client:
    """Return the client deliveries use: no redirects, no proxies from the environment, and no
    kept-alive connections (each delivery connects to the address it resolved, with its own SNI).
    Certificates are checked against the public CAs, and those in ``ca_file`` if given."""
    context = ssl.create_default_context(cafile=certifi.where())
    if ca_file is not None:
        context.load_verify_locations(cafile=ca_file)
    return httpx.Client(
        verify=context,
        follow_redirects=False,
        trust_env=False,
        timeout=timeout_s,
        limits=httpx.Limits(max_keepalive_connections=0),
        headers={"User-Agent": f"latentq-webhooks/{latentq.__version__}", "Content-Type": "application/json"},
    )


_dispatcher: Dispatcher | None = None


def get_dispatcher() -> Dispatcher:
    """Return the process's dispatcher state, made on first use."""
    global _dispatcher
    if _dispatcher is None:
        _dispatcher = Dispatcher.create(get_dispatcher_settings())
    return _dispatcher


def post(http: httpx.Client, target: Target, body: bytes, headers: dict[str, str]) -> int:
    """POST ``body`` to ``target``'s resolved addresses in turn until one connects (``Host`` and the TLS
    name: its host); return the status. The answer's body is never read."""
    extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
    for index, address in enumerate(target.addresses):
        url = httpx.URL(scheme=target.scheme, host=address, port=target.port, raw_path=target.path.encode())
        request = http.build_request(
            "POST", url, content=body, headers={"Host": target.host_header, **headers}, extensions=extensions
        )
        try:
            response = http.send(request, stream=True)
        except httpx.ConnectError:
            if index == len(target.addresses) - 1:
                raise
            continue
        response.close()
        return response.status_code
    raise AssertionError("a resolved target has at least one address")


def deliver(job_id: str, event: str, message_id: str, occurred_at: str) -> Retry | dict[str, object]:
    """Deliver webhook ``event`` of ``job_id`` (the RQ task); return RQ a ``Retry`` to try again later."""
    dispatcher = get_dispatcher()
    current = get_current_job()
    record = dispatcher.records.get(job_id)
    if record is None or record.spec.webhook is None:
        log.info("webhook %s of job %s not sent: the job expired", event, job_id)
        return {"state": "expired"}
    url = record.spec.webhook.url
    report = Report(dispatcher.records, job_id, event, (current.number_of_retries or 0) + 1 if current else 1)
    if event != "completed" and record.status.is_terminal:
        return report("dropped", error=f"the job had already ended {record.status.value}")
    if dispatcher.accounts.is_disabled(record.owner, url):
        return report("disabled", error="the URL answered 410 Gone to an earlier webhook")
    data = job_public(record, dispatcher.store).model_dump(mode="json", exclude={"webhook"})
    body = json.dumps({"type": f"job.{event}", "timestamp": occurred_at, "data": data}).encode()
    headers = signature_headers(dispatcher.accounts.signing_secrets(record.owner), message_id, body)
    status_code, error = None, None
    try:
        status_code = post(
            dispatcher.http, resolve(url, dispatcher.settings.webhook_allowed_hosts), body, headers
        )
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
class Report:
    """Keeps the outcome of one delivery attempt in the job record, and logs it."""

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
        log.info("webhook %s of job %s, attempt %d: %s %s", self.event, self.job_id, self.attempt, state,
                 error or status_code or "")  # fmt: skip
        return delivery.model_dump()


def main() -> int:
    """Run the dispatcher until SIGTERM/SIGINT; return its exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_dispatcher_settings()
    redis = Redis.from_url(settings.redis_url)
    redis.ping()
    get_dispatcher()
    queue = Queue(WEBHOOK_QUEUE, connection=redis, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer, name=settings.dispatcher_name)
    log.info(
        "dispatcher ready on queue %s (retries after %s s)",
        WEBHOOK_QUEUE,
        list(settings.webhook_retry_schedule_s),
    )
    worker.work(with_scheduler=True, logging_level="INFO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
