"""API key lookup on the request path: bootstrap keys from the settings, managed keys from Redis
(``latentq.accounts``) through an in-process cache of at most ``CACHE_S`` seconds, so a revoked
key is refused by every API process within that time while a key's requests cost no Redis call
most of the time. Concurrent lookups of one key share one Redis call (the many streams and
requests of a key that all find its cache entry expired at once)."""

from __future__ import annotations

import asyncio
import time
from functools import partial
from typing import Any

from redis.asyncio import Redis as AsyncRedis
from starlette.concurrency import run_in_threadpool

from latentq.accounts import (
    LAST_USED_EVERY_S,
    SCOPES,
    Accounts,
    Principal,
    bootstrap_account,
    matches_bootstrap,
    principal_of,
    secret_digest,
)
from latentq.errors import LatentqError
from latentq.keys import account_key, api_key_key

#: Longest a looked-up key is trusted without asking Redis again, seconds.
CACHE_S = 1.0
#: Cached keys per process beyond which expired entries are dropped.
CACHE_PRUNE_AT = 10_000

# One call: the key's record and its account's, and its last-used time refreshed at most once a
# minute (ARGV: now, the refresh interval, the account key prefix).
_LOOKUP = """
local key = redis.call('HGETALL', KEYS[1])
if #key == 0 then return {key, {}} end
local fields = {}
for i = 1, #key, 2 do fields[key[i]] = key[i + 1] end
local now = tonumber(ARGV[1])
if tonumber(fields['last_used_at'] or '0') < now - tonumber(ARGV[2]) then
    redis.call('HSET', KEYS[1], 'last_used_at', ARGV[1])
end
return {key, redis.call('HGETALL', ARGV[3] .. fields['account'])}
"""


def _pairs(flat: list[Any]) -> dict[str, str]:
    return {flat[i].decode(): flat[i + 1].decode() for i in range(0, len(flat), 2)}


class Keyring:
    """Turns a presented API key into a ``Principal``, or raises ``unauthorized``."""

    def __init__(self, redis: AsyncRedis, accounts: Accounts, bootstrap_keys: tuple[str, ...]) -> None:
        self.redis = redis
        self.accounts = accounts
        self.bootstrap_keys = bootstrap_keys
        self._lookup = redis.register_script(_LOOKUP)
        self._cache: dict[str, tuple[float, Principal]] = {}
        self._pending: dict[str, asyncio.Future[Principal]] = {}
        #: Each bootstrap account's name (its key id outside: the account id is a digest of the key).
        self._bootstrap_names: dict[str, str] = {}

    async def authenticate(self, token: str) -> Principal:
        """Return who ``token`` belongs to; raise ``unauthorized`` for an unknown, revoked or
        expired key."""
        if matches_bootstrap(token, self.bootstrap_keys):
            return await self._bootstrap(token)
        digest = secret_digest(token)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and cached[0] > now:
            return cached[1]
        pending = self._pending.get(digest)
        if pending is None:
            pending = self._pending[digest] = asyncio.ensure_future(self._look_up(digest, now))
            pending.add_done_callback(partial(self._done, digest))
        return await asyncio.shield(pending)

    def _done(self, digest: str, lookup: asyncio.Future[Principal]) -> None:
        del self._pending[digest]
        if not lookup.cancelled():
            lookup.exception()  # seen, even when every request that waited for it has gone

    async def _look_up(self, digest: str, now: float) -> Principal:
        """Look the key up in Redis and cache it until ``CACHE_S`` after ``now``, when it was asked."""
        key, account = await self._lookup(keys=[api_key_key(digest)],
                                          args=[time.time(), LAST_USED_EVERY_S, account_key("")])  # fmt: skip
        principal = principal_of(_pairs(key), _pairs(account), time.time())
        if principal is None:
            self._cache.pop(digest, None)
            raise LatentqError("unauthorized", "The API key is not valid.")
        if len(self._cache) >= CACHE_PRUNE_AT:
            self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
        self._cache[digest] = (now + CACHE_S, principal)
        return principal

    async def _bootstrap(self, token: str) -> Principal:
        account = bootstrap_account(token)
        name = self._bootstrap_names.get(account)
        if name is None:  # first use in this process: its account shows in the admin's listing
            name = await run_in_threadpool(self.accounts.ensure_bootstrap_account, account)
            self._bootstrap_names[account] = name
        return Principal(account, name, frozenset(SCOPES), bootstrap=True)
