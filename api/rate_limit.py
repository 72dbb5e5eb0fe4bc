"""Per-key request rate limits: GCRA (the generic cell rate algorithm) in one Redis script call, so
every API process shares one count per key.

The script is one condition of ``latentq.command_batch`` (``require_rate``): a submit makes it in
its own script call, every other request in a call of its own. A limit of ``L`` requests per
``P`` seconds lets a key send one request every ``P / L`` seconds on
average and ``L`` at once after ``P`` seconds of quiet: Redis keeps only the key's *theoretical
arrival time* (TAT). A request is admitted if TAT - now <= P - P/L, and then moves TAT on by P/L.
Times come from Redis' clock, so API processes with skewed clocks agree.

The answer's ``RateLimit-Limit``, ``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until
the full burst is available again) follow the IETF RateLimit header fields draft.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass

from redis.asyncio import Redis as AsyncRedis

from api.metrics import RATE_LIMITED
from latentq.accounts import Principal
from latentq.command_batch import CommandBatch
from latentq.errors import LatentqError
from latentq.keys import rate_key
from latentq.settings import ApiSettings


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


def _units(limit: int, period_s: float) -> tuple[int, int]:
    """The period and emission interval of ``limit`` per ``period_s``, microseconds (the interval
    rounded down, so that ``limit`` fit in a burst exactly)."""
    period_us = round(period_s * 1_000_000)
    return period_us, max(1, period_us // limit)


@dataclass
class RateCheck:
    """One request's rate check against ``limit`` per ``period_s`` for key ``key_id``, made in a
    ``CommandBatch``: its own (``RateLimiter``), or the submit's, to save a round trip."""

    key_id: str
    limit: int
    period_s: float
    #: Once made: the outcome.
    verdict: Verdict | None = None

    def add_to(self, batch: CommandBatch) -> None:
        """Make ``batch``'s first condition this check."""
        batch.require_rate(rate_key(self.key_id), *_units(self.limit, self.period_s))

    def settle(self, batch: CommandBatch, admitted: bool) -> Verdict:
        """Read the outcome from ``batch``, run."""
        period_us, interval_us = _units(self.limit, self.period_s)
        used_us = batch.rate_used_us
        remaining = int((period_us - used_us) // interval_us) if admitted else 0
        self.verdict = Verdict(
            admitted, self.limit, max(0, remaining), used_us / 1e6, batch.rate_wait_us / 1e6
        )
        return self.verdict

    def refusal(self) -> LatentqError:
        """The ``rate_limited`` error of a refused check."""
        assert self.verdict is not None
        return LatentqError(
            "rate_limited",
            f"This API key may make {self.limit} requests per {self.period_s:g} s; "
            f"retry in {self.verdict.retry_after_s:.1f} s.",
            retry_after_s=self.verdict.retry_after_s,
        )


#: The check of a submit request, left by the request guard for the submit's own script call
#: (``api.submit.enqueue_job``) to make; the guard makes it itself if the request ends before.
DEFERRED: ContextVar[RateCheck | None] = ContextVar("latentq_deferred_rate_check", default=None)


#: Keys remembered as over their rate per process beyond which lapsed entries are dropped.
REFUSED_PRUNE_AT = 10_000


class RateLimiter:
    """Admits or refuses one request of a key, on the shared Redis, in a call of its own.

    It also remembers, in this process, until when each key it saw refused stays refused: a
    refused request does not move the key's TAT, and other processes' requests only move it on, so
    until ``retry_after`` has passed Redis would refuse it again. The request guard refuses such a
    key's submits at once, before their body is read (their own check is made in the submit's
    script, after the body is parsed)."""

    def __init__(self, redis: AsyncRedis) -> None:
        self.redis = redis
        #: Per key refused here: (when it may retry, when its full burst is back), monotonic.
        self._refused_until: dict[str, tuple[float, float]] = {}

    async def check(self, rate: RateCheck) -> Verdict:
        """Count the request of ``rate``; return (and keep in it) the verdict."""
        batch = CommandBatch()
        rate.add_to(batch)
        return rate.settle(batch, await batch.run_async(self.redis))

    def remember(self, rate: RateCheck) -> None:
        """Note the made check ``rate``: if it was refused, its key stays refused for its retry time."""
        if rate.verdict is None or rate.verdict.admitted:
            return
        RATE_LIMITED.inc()
        now = time.monotonic()
        if len(self._refused_until) >= REFUSED_PRUNE_AT:
            self._refused_until = {key: at for key, at in self._refused_until.items() if at[0] > now}
        self._refused_until[rate.key_id] = (now + rate.verdict.retry_after_s, now + rate.verdict.reset_s)

    def still_refused(self, rate: RateCheck) -> bool:
        """Whether ``rate``'s key is known to be over its rate now; if so, ``rate`` holds that
        refusal as its verdict (nothing is counted)."""
        retry_at, reset_at = self._refused_until.get(rate.key_id, (0.0, 0.0))
        now = time.monotonic()
        if retry_at <= now:
            return False
        rate.verdict = Verdict(False, rate.limit, 0, reset_at - now, retry_at - now)
        return True


def rate_policy(principal: Principal, settings: ApiSettings) -> tuple[int, float] | None:
    """Return the (requests, per seconds) limit of ``principal``'s key: its account's, else the
    settings'; None for a bootstrap key (the operator's: not limited)."""
    if principal.bootstrap:
        return None
    limit = principal.limits.get("rate_limit") or settings.rate_limit
    period = principal.limits.get("rate_period_s") or settings.rate_limit_period_s
    return int(limit), float(period)
