"""Standard Webhooks signatures (https://www.standardwebhooks.com) of delivery bodies.

``webhook-id`` (stable across retries of one event), ``webhook-timestamp`` (Unix seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, keyed with the API
key's ``whsec_`` secret; several secrets (during a rotation) give space-separated signatures.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time

from latentq.webhook_accounts import SECRET_PREFIX


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
