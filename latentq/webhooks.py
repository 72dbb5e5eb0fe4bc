"""Webhooks: each API key's secret and default, Standard Webhooks signatures, queued deliveries.

A job's webhook (``webhook_url``/``webhook_events`` on its request, else its API key's default) is
part of its spec. When the job record changes in a way the webhook asked for, ``queue_delivery``
adds a delivery to the ``latentq-webhooks`` RQ queue **in the same transaction** as the change,
so an event is never recorded without its delivery or the other way round. The dispatcher
(``python -m latentq.dispatcher``, never a GPU worker) takes deliveries from that queue, builds
the payload from the job record, signs it and POSTs it.

Signatures follow https://www.standardwebhooks.com: ``webhook-id`` (stable across retries of one
event), ``webhook-timestamp`` (Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256 of
"{id}.{timestamp}.{body}">``, keyed with the API key's ``whsec_`` secret. For a day after a
rotation both the new and the old secret sign (space-separated), so receivers can switch over.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from latentq.contract import DELIVER_TASK, WebhookEvent, WebhookTarget
from latentq.errors import LatentqError
from latentq.keys import WEBHOOK_QUEUE, owner_disabled_webhooks_key, owner_webhook_key
from latentq.rqjobs import AnyPipeline, queue_job
from latentq.ssrf import UnsafeUrl, check_url

SECRET_PREFIX = "whsec_"
#: Seconds a rotated-out secret keeps signing deliveries next to the new one.
ROTATION_GRACE_S = 86400
#: Seconds a delivery may wait in the queue and run before RQ gives it up (the HTTP timeout is
#: the dispatcher's ``webhook_timeout_s``, well below).
DELIVERY_JOB_TIMEOUT_S = 300
#: Seconds RQ keeps a finished delivery (for ``rq info``); failed ones stay a week.
DELIVERY_RESULT_TTL_S = 600
DELIVERY_FAILURE_TTL_S = 7 * 86400

#: The record change (job event) that triggers each webhook event.
WEBHOOK_EVENT_OF: dict[str, WebhookEvent] = {
    "started": "started",
    "progress": "progress",
    "succeeded": "completed",
    "failed": "completed",
    "canceled": "completed",
}


def new_secret() -> str:
    """Return a fresh signing secret: ``whsec_`` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """Return the Standard Webhooks ``v1`` signature of ``body`` sent as ``message_id`` at ``timestamp``."""
    key = base64.b64decode(secret.removeprefix(SECRET_PREFIX))
    signed = f"{message_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_headers(signing_secrets: list[str], message_id: str, body: bytes) -> dict[str, str]:
    """Return the Standard Webhooks headers of ``body`` sent now as ``message_id``, signed with each
    of ``signing_secrets`` (space-separated signatures)."""
    timestamp = int(time.time())
    signatures = " ".join(sign(secret, message_id, timestamp, body) for secret in signing_secrets)
    return {"webhook-id": message_id, "webhook-timestamp": str(timestamp), "webhook-signature": signatures}


def message_id(job_id: str, event: WebhookEvent, step: int | None = None) -> str:
    """Return the ``webhook-id`` of ``event`` of ``job_id``: the same for every retry of it."""
    return f"msg_{job_id}_{event}" + (f"_{step}" if step is not None else "")


def _digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()[:32]


class WebhookAccounts:
    """Each API key's webhook settings in Redis (by owner id): signing secrets, default webhook,
    and the URLs disabled by a 410 answer. They do not expire: they are configuration."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    def _fields(self, owner: str) -> dict[str, str]:
        fields: Any = self.redis.hgetall(owner_webhook_key(owner))
        return {key.decode(): value.decode() for key, value in fields.items()}

    def secret(self, owner: str) -> str:
        """Return ``owner``'s current signing secret, making one on first use."""
        ensure_secret(self.redis, owner)
        return self._fields(owner)["secret"]

    def signing_secrets(self, owner: str) -> list[str]:
        """Return the secrets that sign ``owner``'s deliveries: the current one, and the previous one
        during its grace period after a rotation."""
        fields = self._fields(owner)
        if "secret" not in fields:
            return [self.secret(owner)]
        current = [fields["secret"]]
        if fields.get("previous_secret") and float(fields.get("previous_until", 0)) > time.time():
            current.append(fields["previous_secret"])
        return current

    def rotate(self, owner: str) -> str:
        """Replace ``owner``'s secret with a new one (the old one signs too for ``ROTATION_GRACE_S``)."""
        old = self.secret(owner)
        new = new_secret()
        self.redis.hset(
            owner_webhook_key(owner),
            mapping={"secret": new, "previous_secret": old, "previous_until": time.time() + ROTATION_GRACE_S},
        )
        return new

    def default(self, owner: str) -> WebhookTarget | None:
        """Return ``owner``'s default webhook, if it set one."""
        return _default_of(self._fields(owner))

    def set_default(self, owner: str, target: WebhookTarget | None) -> None:
        """Set (or, with None, remove) ``owner``'s default webhook."""
        key = owner_webhook_key(owner)
        if target is None:
            self.redis.hdel(key, "url", "events")
        else:
            self.redis.hset(key, mapping={"url": target.url, "events": json.dumps(target.events)})

    def disable(self, owner: str, url: str, for_s: int) -> None:
        """Stop sending ``owner``'s webhooks to ``url`` (it answered 410 Gone) for ``for_s`` seconds."""
        entry = {"url": url, "disabled_at": time.time(), "until": time.time() + for_s}
        self.redis.hset(owner_disabled_webhooks_key(owner), _digest(url), json.dumps(entry))

    def disabled_urls(self, owner: str) -> list[dict[str, Any]]:
        """Return ``owner``'s disabled URLs (``url``, ``disabled_at``, ``until``), dropping lapsed ones."""
        key = owner_disabled_webhooks_key(owner)
        entries: Any = self.redis.hgetall(key)
        now = time.time()
        current, lapsed = [], []
        for field, value in entries.items():
            entry = json.loads(value)
            if entry["until"] > now:
                current.append(entry)
            else:
                lapsed.append(field)
        if lapsed:
            self.redis.hdel(key, *lapsed)
        return current

    def is_disabled(self, owner: str, url: str) -> bool:
        """Return whether ``url`` is disabled for ``owner``'s webhooks."""
        value: Any = self.redis.hget(owner_disabled_webhooks_key(owner), _digest(url))
        return value is not None and json.loads(value)["until"] > time.time()

    def enable_all(self, owner: str) -> None:
        """Send ``owner``'s webhooks to every URL again."""
        self.redis.delete(owner_disabled_webhooks_key(owner))


def ensure_secret(redis: Redis | AnyPipeline, owner: str) -> None:
    """Make (or queue on a pipeline the making of) ``owner``'s signing secret, unless it has one."""
    redis.hsetnx(owner_webhook_key(owner), "secret", new_secret())


async def default_webhook(redis: AsyncRedis, owner: str) -> WebhookTarget | None:
    """Return ``owner``'s default webhook, if it set one (on the asyncio client: no thread)."""
    fields: Any = await redis.hgetall(owner_webhook_key(owner))
    return _default_of({key.decode(): value.decode() for key, value in fields.items()})


def _default_of(fields: dict[str, str]) -> WebhookTarget | None:
    if not fields.get("url"):
        return None
    return WebhookTarget(url=fields["url"], events=json.loads(fields.get("events") or '["completed"]'))


def webhook_target(
    url: str | None,
    events: list[WebhookEvent] | None,
    default: WebhookTarget | None,
    allowed_hosts: tuple[str, ...],
    field: str = "webhook_url",
) -> WebhookTarget | None:
    """Return the webhook of a request: its own ``url`` (and ``events``, default ``[completed]``),
    else the key's ``default`` (with the request's ``events`` if given), else None. Raise a named
    error if the URL may not receive webhooks or events come without any URL."""
    if url is None:
        if default is None:
            if events is not None:
                raise LatentqError.for_field(
                    "invalid_webhook_events", "webhook_events",
                    "webhook_events: give webhook_url too (this API key has no default webhook)",
                )  # fmt: skip
            return None
        url = default.url
        events = events or default.events
    else:
        try:
            check_url(url, allowed_hosts)
        except UnsafeUrl as error:
            raise LatentqError.for_field("invalid_webhook_url", field, f"{field}: {error}") from None
    ordered: list[WebhookEvent] = ["started", "progress", "completed"]
    wanted = set(events or ["completed"])
    return WebhookTarget(url=url, events=[event for event in ordered if event in wanted])


def queue_delivery(
    pipeline: AnyPipeline,
    job_id: str,
    event: WebhookEvent,
    occurred_at: str,
    step: int | None = None,
) -> None:
    """Queue the delivery of ``event`` of ``job_id`` (which happened at ``occurred_at``) on ``pipeline``,
    to run with the record change queued there."""
    queue_job(
        pipeline,
        WEBHOOK_QUEUE,
        DELIVER_TASK,
        {
            "job_id": job_id,
            "event": event,
            "message_id": message_id(job_id, event, step),
            "occurred_at": occurred_at,
        },
        timeout=DELIVERY_JOB_TIMEOUT_S,
        result_ttl=DELIVERY_RESULT_TTL_S,
        failure_ttl=DELIVERY_FAILURE_TTL_S,
        description=f"webhook {event} of job {job_id}",
    )
