"""Per-key request rate limits: GCRA (the generic cell rate algorithm) in one Redis script call, so
every API process shares one count per key.

A limit of ``L`` requests per ``P`` seconds lets a key send one request every ``P / L`` seconds on
average and ``L`` at once after ``P`` seconds of quiet: Redis keeps only the key's *theoretical
arrival time* (TAT). A request is admitted if TAT - now <= P - P/L, and then moves TAT on by P/L.
Times come from Redis' clock, so API processes with skewed clocks agree.

The answer's ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until
the full burst is available again) follow the IETF RateLimit header fields draft.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from redis.asyncio import Redis as AsyncRedis

if TYPE_CHECKING:
    from api.services import Services

from latentq.accounts import MILLI, Principal
from latentq.contract import JobSpec
from latentq.keys import rate_key
from latentq.models import ModelRegistry, job_cost
from latentq.settings import ApiSettings

# KEYS[1]: the key's TAT; ARGV: period and emission interval, microseconds. Returns admitted (0/1),
# microseconds until a request would be admitted, and until the TAT is reached (the reset).
_GCRA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local period, interval = tonumber(ARGV[1]), tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
if tat < now then tat = now end
local after = tat + interval
if after - now > period then
    return {0, after - now - period, tat - now}
end
redis.call('SET', KEYS[1], string.format('%d', after), 'PX', math.ceil((after - now) / 1000))
return {1, 0, after - now}
"""


@dataclass(frozen=True)
class Verdict:
    """One request's outcome, and the headers that say so."""

    admitted: bool
    limit: int
    remaining: int
    reset_s: float
    retry_after_s: float

    def headers(self) -> list[tuple[bytes, bytes]]:
        return [
            (b"ratelimit-limit", str(self.limit).encode()),
            (b"ratelimit-remaining", str(self.remaining).encode()),
            (b"ratelimit-reset", str(max(0, round(self.reset_s))).encode()),
        ]


class RateLimiter:
    """Admits or refuses one request of a key, on the shared Redis."""

    def __init__(self, redis: AsyncRedis) -> None:
        self._script = redis.register_script(_GCRA)

    async def check(self, key_id: str, limit: int, period_s: float) -> Verdict:
        """Count a request of ``key_id`` against ``limit`` per ``period_s``; return the verdict."""
        period_us = round(period_s * 1_000_000)
        interval_us = max(1, period_us // limit)  # rounded down: ``limit`` fit in a burst exactly
        result: Any = await self._script(keys=[rate_key(key_id)], args=[period_us, interval_us])
        admitted, wait_us, used_us = (int(value) for value in result)
        remaining = int((period_us - used_us) // interval_us) if admitted else 0
        return Verdict(bool(admitted), limit, max(0, remaining), used_us / 1e6, wait_us / 1e6)


def rate_policy(principal: Principal, settings: ApiSettings) -> tuple[int, float] | None:
    """Return the (requests, per seconds) limit of ``principal``'s key: its account's, else the
    settings'; None for a bootstrap key (the operator's: not limited)."""
    if principal.bootstrap:
        return None
    limit = principal.limits.get("rate_limit") or settings.rate_limit
    period = principal.limits.get("rate_period_s") or settings.rate_limit_period_s
    return int(limit), float(period)


def job_cap(principal: Principal, settings: ApiSettings) -> int | None:
    """Return how many jobs ``principal``'s account may have queued and running at once: its own
    ``max_jobs``, else the settings'; None for a bootstrap key (not capped)."""
    if principal.bootstrap:
        return None
    return int(principal.limits.get("max_jobs") or settings.max_jobs_per_account)


def spec_cost(spec: JobSpec, registry: ModelRegistry) -> float:
    """Credits ``spec``'s job costs (``latentq.models.job_cost``)."""
    model = registry.get(spec.model)
    assert model is not None  # validated
    return job_cost(model, spec.width, spec.height, spec.steps, spec.samples, spec.task)


class Admission(NamedTuple):
    """What a job is admitted on (``submit_job``'s ``max_jobs`` and ``cost``)."""

    max_jobs: int | None
    #: Thousandths of a credit; None: free.
    cost: int | None


def admission(principal: Principal, services: Services, spec: JobSpec) -> Admission:
    """The terms ``submit_job`` admits ``spec``'s job for ``principal`` on: ``max_jobs``
    (``job_cap``) and ``cost`` in thousandths of a credit (None: an unlimited account's, or a
    bootstrap key's, job is free)."""
    unlimited = principal.bootstrap or principal.limits.get("unlimited") == "1"
    cost = None if unlimited else round(spec_cost(spec, services.registry) * MILLI)
    return Admission(job_cap(principal, services.settings), cost)
