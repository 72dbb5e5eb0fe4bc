"""Dependencies of the route handlers: settings, Redis, job records, image store, the caller's key."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.connection import Connection as AsyncConnection
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from latentq.errors import LatentqError
from latentq.jobs import JobRecords
from latentq.models import ModelRegistry
from latentq.settings import ApiSettings, get_registry
from latentq.storage import ImageStore

# Dependencies are ``async def`` and read ``app.state.services``, made once at start-up: FastAPI
# runs a plain ``def`` dependency in its thread pool, and solves every sub-dependency on every
# request; both dominated the submit path.


class HiredisPackingConnection(AsyncConnection):
    """An asyncio connection that packs commands with hiredis, as redis-py's sync connection does
    when hiredis is installed (its asyncio one packs in Python: a tenth of a submit's time)."""

    _packer = HiredisRespSerializer()

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)


@dataclass(frozen=True)
class JobServices:
    """The process's services, made once per app: settings, the model registry, both Redis clients,
    the job records and the image store."""

    settings: ApiSettings
    registry: ModelRegistry
    redis: Redis
    async_redis: AsyncRedis
    records: JobRecords
    store: ImageStore

    @classmethod
    def create(cls, settings: ApiSettings) -> JobServices:
        """Make the services of ``settings`` (no I/O). Call it in the app's event loop: the asyncio
        client belongs to it; the sync client's pool is thread-safe."""
        redis = Redis.from_url(
            settings.redis_url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30
        )
        async_redis = AsyncRedis.from_url(
            settings.redis_url, socket_connect_timeout=5, max_connections=settings.async_redis_connections,
            connection_class=HiredisPackingConnection if HIREDIS_AVAILABLE else AsyncConnection,
        )  # fmt: skip
        records = JobRecords(redis, settings.job_retention_s, settings.max_job_retention_s)
        return cls(settings, get_registry(settings), redis, async_redis, records, ImageStore(settings))


async def get_job_services(request: Request) -> JobServices:
    """Return the app's services."""
    services: JobServices = request.app.state.services
    return services


JobServicesDep = Annotated[JobServices, Depends(get_job_services)]


async def get_settings(request: Request) -> ApiSettings:
    """Return the app's settings."""
    return (await get_job_services(request)).settings


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


async def get_redis(request: Request) -> Redis:
    """Return the app's Redis client."""
    return (await get_job_services(request)).redis


RedisDep = Annotated[Redis, Depends(get_redis)]


async def get_model_registry(request: Request) -> ModelRegistry:
    """Return the model registry of the settings (read at start-up)."""
    return (await get_job_services(request)).registry


RegistryDep = Annotated[ModelRegistry, Depends(get_model_registry)]


async def get_job_records(request: Request) -> JobRecords:
    """Return the job-record store."""
    return (await get_job_services(request)).records


JobRecordsDep = Annotated[JobRecords, Depends(get_job_records)]


async def get_image_store(request: Request) -> ImageStore:
    """Return the app's image store."""
    return (await get_job_services(request)).store


ImageStoreDep = Annotated[ImageStore, Depends(get_image_store)]


def check_api_key(token: str, settings: ApiSettings) -> str:
    """Return ``token`` if it is a configured API key; raise ``unauthorized`` otherwise."""
    # Compare against every key, in constant time each, so timing reveals nothing.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in settings.api_keys]
    if not any(matches):
        raise LatentqError("unauthorized", "The API key is not valid.")
    return token


def key_owner(api_key: str) -> str:
    """Return the id the service knows an API key by (a digest: the key itself is never stored)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


async def require_api_key(request: Request) -> str:
    """Return the caller's API key (``Authorization: Bearer <key>``); raise ``unauthorized``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise LatentqError("unauthorized")
    return check_api_key(token, await get_settings(request))


ApiKeyDep = Annotated[str, Depends(require_api_key)]


async def get_async_redis(request: Request) -> AsyncRedis:
    """Return the app's asyncio Redis client, for waits that must not hold a thread."""
    return (await get_job_services(request)).async_redis


AsyncRedisDep = Annotated[AsyncRedis, Depends(get_async_redis)]
