"""Dependencies of the route handlers: settings, Redis, job records, image store, the caller's key."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated

from fastapi import Depends, Request
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from latentq.errors import LatentqError
from latentq.jobs import JobRecords
from latentq.models import ModelRegistry
from latentq.settings import ApiSettings, get_registry
from latentq.storage import ImageStore

# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, one
# round trip per dependency per request, which dominated the submit path. These do no I/O.


async def get_settings(request: Request) -> ApiSettings:
    """Return the app's settings (``create_app``'s, or the environment's)."""
    settings: ApiSettings = request.app.state.settings
    return settings


SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


@lru_cache
def _redis_for(url: str) -> Redis:
    # One connection pool per URL for the process; redis-py pools are thread-safe.
    return Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5, health_check_interval=30)


async def get_redis(settings: SettingsDep) -> Redis:
    """Return the process's Redis client for the configured URL (made once, without I/O)."""
    return _redis_for(settings.redis_url)


RedisDep = Annotated[Redis, Depends(get_redis)]


async def get_model_registry(settings: SettingsDep) -> ModelRegistry:
    """Return the model registry of the settings (read at start-up)."""
    return get_registry(settings)


RegistryDep = Annotated[ModelRegistry, Depends(get_model_registry)]


async def get_job_records(redis: RedisDep, settings: SettingsDep) -> JobRecords:
    """Return the job-record store."""
    return JobRecords(redis, settings.job_retention_s, settings.max_job_retention_s)


JobRecordsDep = Annotated[JobRecords, Depends(get_job_records)]


@lru_cache
def image_store_for(settings: ApiSettings) -> ImageStore:
    """Return the image store for ``settings`` (built once: a boto3 client takes a while to make;
    ``create_app`` builds it at start-up)."""
    return ImageStore(settings)


async def get_image_store(settings: SettingsDep) -> ImageStore:
    """Return the app's image store."""
    return image_store_for(settings)


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


async def require_api_key(request: Request, settings: SettingsDep) -> str:
    """Return the caller's API key (``Authorization: Bearer <key>``); raise ``unauthorized``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise LatentqError("unauthorized")
    return check_api_key(token, settings)


ApiKeyDep = Annotated[str, Depends(require_api_key)]


async def get_async_redis(request: Request) -> AsyncRedis:
    """Return the app's asyncio Redis client (made at start-up), for waits that must not hold a thread."""
    client: AsyncRedis = request.app.state.async_redis
    return client


AsyncRedisDep = Annotated[AsyncRedis, Depends(get_async_redis)]


@dataclass
class JobServices:
    """What routes that create and await jobs use: settings, the model registry, both Redis clients,
    the job records and the image store."""

    settings: ApiSettings
    registry: ModelRegistry
    redis: Redis
    async_redis: AsyncRedis
    records: JobRecords
    store: ImageStore


async def get_job_services(
    settings: SettingsDep,
    registry: RegistryDep,
    redis: RedisDep,
    async_redis: AsyncRedisDep,
    records: JobRecordsDep,
    store: ImageStoreDep,
) -> JobServices:
    """Return the services of a route that creates or awaits jobs."""
    return JobServices(settings, registry, redis, async_redis, records, store)


JobServicesDep = Annotated[JobServices, Depends(get_job_services)]
