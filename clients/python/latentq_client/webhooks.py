"""Checking webhook deliveries: Standard Webhooks signatures (https://www.standardwebhooks.com), as
the dispatcher makes them, with the account's ``whsec_`` secret."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

from latentq_client.errors import WebhookVerificationError

SECRET_PREFIX = "whsec_"
#: Largest gap between a delivery's ``webhook-timestamp`` and now, seconds: an older (replayed) or
#: far-future delivery is refused, as the reference library does.
TOLERANCE_S = 300


def expected_signature(secret: str, message_id: str, timestamp: str, payload: bytes) -> bytes:
    """Return the HMAC-SHA256 of ``"{id}.{timestamp}.{body}"`` keyed with ``secret``'s base64 bytes."""
    try:
        key = base64.b64decode(secret.removeprefix(SECRET_PREFIX), validate=True)
    except binascii.Error as error:
        raise WebhookVerificationError("invalid_secret", "the secret is not whsec_ and base64") from error
    return hmac.new(key, f"{message_id}.{timestamp}.".encode() + payload, hashlib.sha256).digest()


def signed_by(signatures: str, expected: bytes) -> bool:
    """Return whether one of the space-separated ``v1,<base64>`` ``signatures`` is ``expected``
    (several during a secret's rotation); compared in constant time."""
    for signature in signatures.split():
        version, _, encoded = signature.partition(",")
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except binascii.Error:
            continue
        if version == "v1" and hmac.compare_digest(candidate, expected):
            return True
    return False


def verify_webhook(
    payload: bytes | str,
    headers: Mapping[str, str],
    secret: str,
    *,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> dict[str, Any]:
    """Return the delivery's event (``{"type", "timestamp", "data"}``) once its signature and
    timestamp check out; raise ``WebhookVerificationError`` otherwise.

    Args:
        payload: the request body exactly as received (not re-serialised JSON).
        headers: the request's headers (any case).
        secret: the account's ``whsec_`` secret (``GET /v1/webhook``).
        tolerance_s: the largest gap, seconds, between ``webhook-timestamp`` and ``now``.
        now: Unix seconds (default: the clock).
    """
    lowered = {name.lower(): value for name, value in headers.items()}
    message_id = lowered.get("webhook-id")
    timestamp = lowered.get("webhook-timestamp")
    signatures = lowered.get("webhook-signature")
    if not (message_id and timestamp and signatures):
        raise WebhookVerificationError("missing_headers", "webhook-id, -timestamp and -signature are needed")
    fresh = timestamp.isascii() and timestamp.isdigit()  # int() would take other digits too
    if not fresh or abs((time.time() if now is None else now) - int(timestamp)) > tolerance_s:
        raise WebhookVerificationError("invalid_timestamp", f"webhook-timestamp {timestamp!r} is not recent")
    body = payload.encode() if isinstance(payload, str) else payload
    if not signed_by(signatures, expected_signature(secret, message_id, timestamp, body)):
        raise WebhookVerificationError("invalid_signature", "no signature matches the secret")
    try:
        event = json.loads(body)
    except ValueError:  # signed, so sent by the service, yet not JSON: not a delivery of ours
        event = None
    if not isinstance(event, dict):
        raise WebhookVerificationError("invalid_payload", "the signed body is not a JSON object")
    return event
