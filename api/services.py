"""The API process's services, made once per app at start-up: settings, the model registry, the
Redis clients (sync, asyncio, asyncio for long waits), the job records, the image store and the
per-key webhook settings."""

from __future__ import annotations

from dataclasses import dataclass

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from api.keyring import Keyring
from api.rate_limit import RateLimiter
from api.stream_slots import StreamSlots
from latentq.accounts import Accounts
from latentq.models import ModelRegistry
from latentq.records import JobRecords
from latentq.redis_client import async_redis_client, redis_client
from latentq.settings import ApiSettings, get_registry
from latentq.storage import ImageStore
from latentq.webhook_accounts import WebhookAccounts


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
        redis = redis_client(
            settings, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30,
            retry_on_error=retried,
        )  # fmt: skip
        async_redis, wait_redis = (
            async_redis_client(
                settings, socket_connect_timeout=5, max_connections=connections, retry_on_error=retried
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
