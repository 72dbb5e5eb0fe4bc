"""The Redis clients of every process, made from settings: straight from ``LATENTQ_REDIS_URL``, or,
with ``LATENTQ_REDIS_SENTINELS``, to whichever server Redis Sentinel names master now.

A Sentinel-managed client asks the sentinels for the master's address each time it opens a
connection, and drops a connection whose server turned replica (its ``ReadOnlyError`` becomes a
``ConnectionError``, retried on a new connection). So after a failover every process reconnects to
the promoted replica without a restart: what fails during the switch fails as a lost connection
does (the API answers 503, a worker's loop waits for Redis, ``latentq.rq_loop``).

Not Redis Cluster: RQ's transactions span keys of different hash slots.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlparse

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelManagedConnection
from redis.connection import HiredisRespSerializer, parse_url
from redis.sentinel import Sentinel
from redis.utils import HIREDIS_AVAILABLE

from latentq.settings import CommonSettings


class HiredisPackingConnection(AsyncConnection):
    """An asyncio connection that packs commands with hiredis, as redis-py's sync connection does
    when hiredis is installed (its asyncio one packs in Python, a large share of a submit's time:
    see docs/BENCHMARKS.md)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


class SentinelHiredisPackingConnection(AsyncSentinelManagedConnection):
    """``HiredisPackingConnection``'s packing on a Sentinel-managed asyncio connection."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


def sentinel_addresses(sentinels: tuple[str, ...]) -> list[tuple[str, int]]:
    """``("host:port", ...)`` as ``[(host, port), ...]`` (port 26379 when left out)."""
    addresses = []
    for sentinel in sentinels:
        host, _, port = sentinel.rpartition(":") if ":" in sentinel else (sentinel, "", "26379")
        addresses.append((host.strip("[]"), int(port)))
    return addresses


def _server_options(settings: CommonSettings) -> dict[str, Any]:
    """What ``redis_url`` says besides its address (database, user, password, TLS), for the
    servers Sentinel names."""
    options = {
        name: value
        for name, value in parse_url(settings.redis_url).items()
        if name in ("db", "username", "password")
    }
    if urlparse(settings.redis_url).scheme == "rediss":
        options["ssl"] = True
    return options


def _sentinel_options(settings: CommonSettings) -> dict[str, Any]:
    """How to talk to the sentinels themselves (their own password, short timeouts)."""
    options: dict[str, Any] = {"socket_connect_timeout": 2, "socket_timeout": 2}
    if settings.redis_sentinel_password is not None:
        options["password"] = settings.redis_sentinel_password.get_secret_value()
    return options


def redis_client(settings: CommonSettings, **options: Any) -> Redis:
    """The sync client of ``settings``' Redis, with ``options`` (timeouts, ``retry_on_error``,
    ``health_check_interval``, ...) as ``Redis.from_url`` takes them."""
    if not settings.redis_sentinels:
        return Redis.from_url(settings.redis_url, **options)
    sentinel = Sentinel(
        sentinel_addresses(settings.redis_sentinels), sentinel_kwargs=_sentinel_options(settings)
    )
    return sentinel.master_for(settings.redis_sentinel_master, **_server_options(settings), **options)


def async_redis_client(settings: CommonSettings, **options: Any) -> AsyncRedis:
    """The asyncio client of ``settings``' Redis, with ``options`` as ``AsyncRedis.from_url`` takes
    them; its connections pack commands with hiredis when it is installed. Make it in the event
    loop that uses it."""
    if not settings.redis_sentinels:
        connection_class = HiredisPackingConnection if HIREDIS_AVAILABLE else AsyncConnection
        return AsyncRedis.from_url(settings.redis_url, connection_class=connection_class, **options)
    server = _server_options(settings)
    if not server.get("ssl") and HIREDIS_AVAILABLE:  # with TLS, redis-py's own connection class
        server["connection_class"] = SentinelHiredisPackingConnection
    sentinel = AsyncSentinel(
        sentinel_addresses(settings.redis_sentinels), sentinel_kwargs=_sentinel_options(settings)
    )
    return sentinel.master_for(settings.redis_sentinel_master, **server, **options)
