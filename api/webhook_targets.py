"""A request's webhook target: its own URL checked against the SSRF rules (no DNS at the door),
or its API key's default."""

from __future__ import annotations

from typing import Any

from redis.asyncio import Redis as AsyncRedis

from latentq.contract import WebhookEvent, WebhookTarget
from latentq.errors import LatentqError
from latentq.keys import owner_webhook_key
from latentq.ssrf import UnsafeUrl, check_url
from latentq.webhook_accounts import default_target

#: The order events are listed in.
EVENT_ORDER: tuple[WebhookEvent, ...] = ("started", "progress", "completed")


async def default_webhook(redis: AsyncRedis, owner: str) -> WebhookTarget | None:
    """Return ``owner``'s default webhook, if it set one (on the asyncio client: no thread)."""
    fields: Any = await redis.hgetall(owner_webhook_key(owner))
    return default_target({key.decode(): value.decode() for key, value in fields.items()})


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
    wanted = set(events or ["completed"])
    return WebhookTarget(url=url, events=[event for event in EVENT_ORDER if event in wanted])
