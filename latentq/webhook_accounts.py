"""Each API key's webhook settings in Redis: its signing secrets, its default webhook, and the
URLs disabled by a 410 answer. The API edits them; the dispatcher signs and checks with them.

Secrets follow Standard Webhooks (``whsec_`` and base64 bytes). For ``ROTATION_GRACE_S`` after a
rotation both the new and the old secret sign, so receivers can switch over.
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
import time
from typing import Any

from redis import Redis

from latentq.contract import WebhookTarget
from latentq.keys import owner_disabled_webhooks_key, owner_webhook_key
from latentq.rq_writer import AnyPipeline

SECRET_PREFIX = "whsec_"
#: Seconds a rotated-out secret keeps signing deliveries next to the new one.
ROTATION_GRACE_S = 86400


def new_secret() -> str:
    """Return a fresh signing secret: ``whsec_`` and 24 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(24)).decode()


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
        return default_target(self._fields(owner))

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


def default_target(fields: dict[str, str]) -> WebhookTarget | None:
    """Return the default webhook held in an owner's webhook settings ``fields``, if one is set."""
    if not fields.get("url"):
        return None
    return WebhookTarget(url=fields["url"], events=json.loads(fields.get("events") or '["completed"]'))
