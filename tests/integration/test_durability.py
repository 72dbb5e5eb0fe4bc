"""The API checks at start-up that Redis keeps what it stores (an append-only file, no eviction):
in production it refuses to start without them; in development it says so in its log."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from redis import Redis

from latentq.durability import durability_problems
from latentq_dev.devstack import Process, RedisServer, free_port, wait_until
from tests.conftest import service_env

LONG_KEY = "k" * 40


@pytest.fixture
def durable_redis(tmp_path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis", durable=True).start()
    yield server
    server.stop()


def start_api(redis: RedisServer, s3_server, log_path: Path, **settings: str) -> tuple[Process, int]:
    port = free_port()
    env = service_env(redis, s3_server, api_keys=LONG_KEY, **settings)
    argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
            "--log-level", "warning"]  # fmt: skip
    return Process.start("api", argv, log_path, env), port


def test_the_check_names_each_setting_that_loses_data(redis_server, durable_redis):
    assert durability_problems(Redis.from_url(durable_redis.url)) == []
    assert durability_problems(Redis.from_url(redis_server.url)) == ["appendonly is 'no', not 'yes'"]
    evicting = Redis.from_url(durable_redis.url)
    evicting.config_set("maxmemory-policy", "allkeys-lru")
    assert durability_problems(evicting) == ["maxmemory-policy is 'allkeys-lru', not 'noeviction'"]


def test_production_refuses_to_start_on_a_redis_that_can_lose_data(redis_server, s3_server, tmp_path):
    process, _ = start_api(redis_server, s3_server, tmp_path / "api.log", env="production")
    try:
        wait_until(lambda: process.popen.poll() is not None, 30, "the API to refuse to start")
    finally:
        process.stop()
    assert process.popen.returncode != 0
    assert "Redis can lose jobs and balances: appendonly is 'no'" in (tmp_path / "api.log").read_text()


def test_production_starts_on_a_durable_redis_and_development_warns(durable_redis, redis_server, s3_server,
                                                                    tmp_path):  # fmt: skip
    for redis, env, log_path in ((durable_redis, "production", tmp_path / "prod.log"),
                                 (redis_server, "development", tmp_path / "dev.log")):  # fmt: skip
        process, port = start_api(redis, s3_server, log_path, env=env)
        try:
            url = f"http://127.0.0.1:{port}/healthz"
            wait_until(lambda: httpx.get(url).status_code == 200, 30, "the API", process)  # noqa: B023
        finally:
            process.stop()
    assert "Redis" not in (tmp_path / "prod.log").read_text()
    assert "Redis can lose jobs and balances: appendonly is 'no'" in (tmp_path / "dev.log").read_text()
