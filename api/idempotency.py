"""Safe retries: ``Idempotency-Key`` on job submits.

The first request with a key claims it (``SET NX``, 24 h) for its body's fingerprint and its
new job id, before the job is queued; a repeat with the same body gets that job (200), a repeat
with a different body a 409. Concurrent duplicates race on the one ``SET NX``, so exactly one
job is created. Keys are scoped to the API key that sent them.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass

from pydantic import BaseModel
from redis import Redis

from latentq.errors import LatentqError
from latentq.keys import idempotency_key
from latentq.records import JobRecord, JobRecords

#: How long an idempotency key is remembered, seconds.
IDEMPOTENCY_TTL_S = 24 * 3600
#: How long a repeat waits for the original request to finish queueing its job (storing its input
#: images included), seconds.
ORIGINAL_WAIT_S = 30.0

_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")


def check_key(value: str) -> str:
    """Return ``value`` if it is a usable idempotency key (1-255 printable ASCII characters)."""
    if not _KEY.match(value):
        raise LatentqError.for_field(
            "invalid_idempotency_key", "Idempotency-Key",
            "Idempotency-Key: 1 to 255 printable ASCII characters, no spaces",
        )  # fmt: skip
    return value


@dataclass(frozen=True)
class IdempotencyClaim:
    """An ``Idempotency-Key`` and the fingerprint of the request that came with it."""

    key: str
    fingerprint: str


def idempotency_claim(header: str | None, route: str, body: BaseModel) -> IdempotencyClaim | None:
    """Return the claim of a request to ``route`` with the parsed ``body`` and ``Idempotency-Key``
    header ``header`` (None: no claim); raise for an unusable key. The fingerprint is of the body's
    canonical JSON, so formatting and field order do not matter."""
    if header is None:
        return None
    check_key(header)
    fingerprint = hashlib.sha256(f"{route}\n{body.model_dump_json()}".encode()).hexdigest()
    return IdempotencyClaim(header, fingerprint)


def claim(redis: Redis, owner: str, key: str, body: str, job_id: str) -> str | None:
    """Claim ``key`` for ``job_id``; return None if claimed, else the job id it already names.

    Raise ``idempotency_conflict`` when it was claimed for a different body.
    """
    name = idempotency_key(owner, hashlib.sha256(key.encode()).hexdigest())
    value = json.dumps({"fingerprint": body, "job_id": job_id})
    for _ in range(3):  # the claim may expire between SET NX and GET: try again
        if redis.set(name, value, nx=True, ex=IDEMPOTENCY_TTL_S):
            return None
        existing = redis.get(name)
        if existing is None:
            continue
        original = json.loads(existing)
        if original["fingerprint"] != body:
            raise LatentqError(
                "idempotency_conflict",
                f"Idempotency-Key '{key}' was used with a different request (job {original['job_id']}).",
            )
        job_id_found: str = original["job_id"]
        return job_id_found
    raise LatentqError("service_unavailable", "Could not claim the idempotency key; retry.")


def release(redis: Redis, owner: str, key: str) -> None:
    """Forget ``key`` (the request that claimed it failed before queueing its job)."""
    redis.delete(idempotency_key(owner, hashlib.sha256(key.encode()).hexdigest()))


def original_record(records: JobRecords, job_id: str) -> JobRecord:
    """Return the original request's job record, waiting while that request is still queueing it."""
    deadline = time.monotonic() + ORIGINAL_WAIT_S
    while (record := records.get(job_id)) is None:
        if time.monotonic() > deadline:
            raise LatentqError(
                "service_unavailable", f"The original request's job {job_id} is not there; retry."
            )
        time.sleep(0.02)
    return record
