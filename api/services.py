"""The API process's services, made once per app at start-up: settings, the model registry, the
Redis clients (sync, asyncio, asyncio for long waits), the job records, the image store and the
per-key webhook settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.connection import HiredisRespSerializer
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from redis.utils import HIREDIS_AVAILABLE

from api.keyring import Keyring
from api.rate_limit import RateLimiter
from api.stream_slots import StreamSlots
from latentq.accounts import Accounts
from latentq.models import ModelRegistry
from latentq.records import JobRecords
from latentq.settings import ApiSettings, get_registry
from latentq.storage import ImageStore
from latentq.webhook_accounts import WebhookAccounts


class HiredisPackingConnection(AsyncConnection):
    """An asyncio connection that packs commands with hiredis, as redis-py's sync connection does
    when hiredis is installed (its asyncio one packs in Python, a large share of a submit's time:
    see docs/BENCHMARKS.md)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


@dataclass(frozen=True)
class Services:
    """What route handlers work with (``api.deps.ServicesDep``)."""

    settings: ApiSettings
    registry: ModelRegistry
    #: The sync client, for handlers that run in the thread pool; its pool is thread-safe.
    redis: Redis
    #: The asyncio client, for the submit path and quick reads that must not hold a thread.
    async_redis: AsyncRedis
    #: The asyncio client long waits block on (event streams, ``Prefer: wait``), with a pool of its
    #: own: however many waits are open, submits still get connections.
    wait_redis: AsyncRedis
    #: The slots those waits hold (``api.stream_slots``).
    slots: StreamSlots
    records: JobRecords
    store: ImageStore
    accounts: WebhookAccounts
    #: Accounts, managed keys, credits and the audit trail (``latentq.accounts``).
    tenants: Accounts
    #: Who a presented API key belongs to (``api.keyring``).
    keyring: Keyring
    #: Each key's request rate (``api.rate_limit``).
    limiter: RateLimiter

    @classmethod
    def create(cls, settings: ApiSettings) -> Services:
        """Make the services of ``settings`` (no I/O). Call it in the app's event loop: the asyncio
        client belongs to it."""
        # A connection Redis dropped (it restarted) is retried on a new one, so a client sees at most
        # the outage itself, not stale pooled connections after it.
        retried: list[type[Exception]] = [RedisConnectionError, RedisTimeoutError]
        redis = Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30,
            retry_on_error=retried,
        )  # fmt: skip
        connection_class = HiredisPackingConnection if HIREDIS_AVAILABLE else AsyncConnection
        async_redis, wait_redis = (
            AsyncRedis.from_url(
                settings.redis_url,
                socket_connect_timeout=5,
                max_connections=connections,
                connection_class=connection_class,
                retry_on_error=retried,
            )
            for connections in (settings.async_redis_connections, settings.max_streams + 10)
        )
        records = JobRecords(redis, settings.job_retention_s, settings.max_job_retention_s)
        tenants = Accounts(redis)
        return cls(
            settings, get_registry(settings), redis, async_redis, wait_redis,
            StreamSlots(settings.max_streams, settings.max_streams_per_account), records,
            ImageStore(settings), WebhookAccounts(redis), tenants,
            Keyring(async_redis, tenants, settings.api_keys), RateLimiter(async_redis),
        )  # fmt: skip
