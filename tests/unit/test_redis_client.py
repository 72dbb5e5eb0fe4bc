"""The Redis clients of ``latentq.redis_client``, made without connecting: straight from the URL, or
through Sentinel with the URL's database and password for the master it names."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelConnectionPool
from redis.sentinel import SentinelConnectionPool

from latentq.redis_client import (
    HiredisPackingConnection,
    SentinelHiredisPackingConnection,
    async_redis_client,
    redis_client,
    sentinel_addresses,
)
from latentq.settings import ApiSettings, CommonSettings

SENTINELS = {"redis_sentinels": "10.0.0.1:26380, sentinel-b ,[::1]:26381", "redis_url": "redis://:pw@x:1/3"}


def test_sentinel_addresses_default_their_port():
    settings = CommonSettings.model_validate(SENTINELS)
    assert sentinel_addresses(settings.redis_sentinels) == [
        ("10.0.0.1", 26380), ("sentinel-b", 26379), ("::1", 26381),
    ]  # fmt: skip


def test_without_sentinels_the_client_is_the_urls():
    client = redis_client(CommonSettings(redis_url="redis://127.0.0.1:7/2"), socket_timeout=5)
    kwargs = client.connection_pool.connection_kwargs
    assert (kwargs["port"], kwargs["db"], kwargs["socket_timeout"]) == (7, 2, 5)


def test_with_sentinels_the_client_asks_them_for_the_master_and_keeps_the_urls_db_and_password():
    settings = CommonSettings.model_validate({**SENTINELS, "redis_sentinel_master": "jobs",
                                              "redis_sentinel_password": "sentinel-secret"})  # fmt: skip
    client = redis_client(settings, socket_timeout=5, health_check_interval=30)
    pool = client.connection_pool
    assert isinstance(pool, SentinelConnectionPool) and pool.service_name == "jobs"
    kwargs = pool.connection_kwargs
    assert (kwargs["db"], kwargs["password"], kwargs["socket_timeout"], kwargs["health_check_interval"]) == (
        3, "pw", 5, 30,
    )  # fmt: skip
    sentinel = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs
    assert (sentinel["host"], sentinel["port"], sentinel["password"]) == (
        "10.0.0.1",
        26380,
        "sentinel-secret",
    )


def test_the_asyncio_clients_pack_with_hiredis_with_or_without_sentinels():
    pytest.importorskip("hiredis")

    async def make() -> tuple[type, type, AsyncSentinelConnectionPool]:
        plain = async_redis_client(CommonSettings(redis_url="redis://127.0.0.1:7/0"), max_connections=10)
        managed = async_redis_client(CommonSettings.model_validate(SENTINELS), max_connections=10)
        assert isinstance(managed.connection_pool, AsyncSentinelConnectionPool)
        return (
            plain.connection_pool.connection_class,
            managed.connection_pool.connection_class,
            managed.connection_pool,
        )

    plain, managed, pool = asyncio.run(make())
    assert plain is HiredisPackingConnection and managed is SentinelHiredisPackingConnection
    assert pool.max_connections == 10


def test_submits_wait_for_a_replica_by_default_only_with_sentinels():
    assert ApiSettings(api_keys=("k",)).replicas_to_wait_for == 0
    assert ApiSettings(api_keys=("k",), redis_sentinels=("h:1",)).replicas_to_wait_for == 1
    assert (
        ApiSettings(api_keys=("k",), redis_sentinels=("h:1",), redis_wait_replicas=0).replicas_to_wait_for
        == 0
    )
