"""Whether Redis keeps what latentq stores in it: jobs, accounts, keys and balances live only there.

Redis must write an append-only file (``appendonly yes``: a restart loses at most the last
second) and never evict keys to make room (``maxmemory-policy noeviction``: full, it refuses
writes, which the API answers as 503, instead of silently dropping a job, a balance or a
revocation). The API checks both when it starts: in production it refuses to start without them,
in development it says so in its log.

With replicas (Redis Sentinel), a write acknowledged by the master alone can be lost in a
failover; the API waits for ``LATENTQ_REDIS_WAIT_REPLICAS`` of them to acknowledge each submit
(``api.submit``), so it also checks at start-up that the master has that many, and says so in its
log if not (its submits are refused until it has).
"""

from __future__ import annotations

from redis import Redis
from redis.exceptions import ResponseError

#: The settings latentq needs, and the value each must have.
REQUIRED = {"appendonly": "yes", "maxmemory-policy": "noeviction"}


def _text(value: str | bytes | None) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def durability_problems(redis: Redis) -> list[str] | None:
    """Return what in Redis' configuration can lose stored data (empty: nothing), or None where
    Redis does not let its configuration be read (managed services often disable ``CONFIG``).
    Raises ``RedisError`` if Redis is unreachable."""
    try:
        config = {_text(name): _text(value) for name, value in redis.config_get(*REQUIRED).items()}
    except ResponseError:
        return None
    return [
        f"{name} is {config.get(name, 'unset')!r}, not {wanted!r}"
        for name, wanted in REQUIRED.items()
        if config.get(name) != wanted
    ]


def replication_problem(redis: Redis, replicas: int) -> str | None:
    """Return why the master behind ``redis`` cannot have each submit acknowledged by ``replicas``
    replicas (None: it can, none is asked for, or Redis refuses ``INFO``). Raises ``RedisError`` if
    Redis is unreachable."""
    if not replicas:
        return None
    try:
        info = redis.info("replication")
    except ResponseError:
        return None
    online = sum(1 for value in info.values() if isinstance(value, dict) and value.get("state") == "online")
    if online >= replicas:
        return None
    return f"Redis has {online} replica(s) in sync; submits wait for {replicas} (LATENTQ_REDIS_WAIT_REPLICAS)"
