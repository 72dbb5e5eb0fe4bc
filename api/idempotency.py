"""Safe retries: ``Idempotency-Key`` on job submits.

The first request with a key claims it (``SET NX``) for its body's fingerprint and its new job
id, before the job is queued; a repeat with the same body gets that job (200), a repeat with a
different body a 409. Concurrent duplicates race on the one ``SET NX``, so exactly one job is
created. Keys are scoped to the account whose key sent them, and live as long as their job's record
(its retention): a retry after the job expired makes a new job. A claim whose job never appeared
(its request died before queueing it) is taken over by the next request after ``ORIGINAL_WAIT_S``.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from redis import Redis

from latentq.errors import LatentqError
from latentq.keys import idempotency_key
from latentq.records import JobRecord, JobRecords

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


# Replaces a claim only if it still holds the value read (another request may have taken it over).
_TAKE_OVER = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'EX', ARGV[3]) end
return false
"""


# Deletes a claim only if it names the job (ARGV[1] is its "job_id" entry, as stored).
_RELEASE = """
local value = redis.call('get', KEYS[1])
if value and string.find(value, ARGV[1], 1, true) then return redis.call('del', KEYS[1]) end
return 0
"""


def claim_name(owner: str, key: str) -> str:
    """Return the Redis key of account ``owner``'s claim of ``Idempotency-Key`` ``key``."""
    return idempotency_key(owner, hashlib.sha256(key.encode()).hexdigest())


@dataclass(frozen=True)
class Original:
    """The job an earlier request with the same key made (or is making), and its claim."""

    job_id: str
    #: When the key was claimed, Unix seconds.
    claimed_at: float
    #: The claim as stored (to take it over only if unchanged).
    value: bytes


def claim(redis: Redis, owner: str, key: str, body: str, job_id: str, ttl_s: int) -> Original | None:
    """Claim ``key`` for ``job_id`` for ``ttl_s`` seconds (the job's retention); return None if
    claimed, else the original job it names. Raise ``idempotency_conflict`` when it was claimed
    for a different body."""
    name = claim_name(owner, key)
    value = json.dumps({"fingerprint": body, "job_id": job_id, "at": time.time()})
    for _ in range(3):  # the claim may expire between SET NX and GET: try again
        if redis.set(name, value, nx=True, ex=ttl_s):
            return None
        existing: Any = redis.get(name)
        if existing is None:
            continue
        original = json.loads(existing)
        if original["fingerprint"] != body:
            raise LatentqError(
                "idempotency_conflict",
                f"Idempotency-Key '{key}' was used with a different request (job {original['job_id']}).",
            )
        return Original(original["job_id"], float(original.get("at", 0)), existing)
    raise LatentqError("service_unavailable", "Could not claim the idempotency key; retry.")


def take_over(redis: Redis, owner: str, key: str, original: Original, job_id: str, ttl_s: int) -> bool:
    """Claim ``key`` for ``job_id`` in place of ``original``, whose job never appeared; False if
    another request took it over first."""
    name = claim_name(owner, key)
    fingerprint = json.loads(original.value)["fingerprint"]
    value = json.dumps({"fingerprint": fingerprint, "job_id": job_id, "at": time.time()})
    return bool(redis.eval(_TAKE_OVER, 1, name, original.value, value, ttl_s))


def release(redis: Redis, owner: str, key: str, job_id: str) -> None:
    """Forget ``key`` if it still names ``job_id`` (the request that claimed it failed before
    queueing its job; a retry that took it over keeps it)."""
    redis.eval(_RELEASE, 1, claim_name(owner, key), f'"job_id": "{job_id}"')


def original_record(records: JobRecords, original: Original) -> JobRecord | None:
    """Return the original request's job record, waiting while that request may still be queueing
    it (until ``ORIGINAL_WAIT_S`` after its claim); None if it never appeared."""
    while (record := records.get(original.job_id)) is None:
        if time.time() > original.claimed_at + ORIGINAL_WAIT_S:
            return None
        time.sleep(0.02)
    return record
