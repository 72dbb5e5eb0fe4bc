"""A submit waits for a replica (``LATENTQ_REDIS_WAIT_REPLICAS``): on a Redis with no replica it is
answered 503 ``service_unavailable``, never 202, and a retry with the same Idempotency-Key finds the
job the master holds instead of queueing a second one. With a replica, it is answered 202."""

from __future__ import annotations

import uuid

import httpx
from redis import Redis

from latentq.durability import replication_problem
from latentq_dev.devstack import RedisServer, wait_until
from tests.conftest import API_KEY, api_settings, serve
from tests.integration.test_lifecycle import BODY, IDLE

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_a_submit_no_replica_acknowledged_is_refused_and_its_retry_finds_it(redis_server, s3_server):
    settings = api_settings(redis_server, s3_server, models=[IDLE], default_model="idle-sd",
                            redis_wait_replicas=1, redis_replica_wait_ms=50)  # fmt: skip
    with serve(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
        refused = client.post("/v1/generate", json=BODY)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["name"] == "service_unavailable"
        assert refused.headers["retry-after"] == "1"

        key = {"Idempotency-Key": f"order-{uuid.uuid4()}"}
        first = client.post("/v1/generate", json=BODY, headers=key)
        assert first.status_code == 503
        again = client.post("/v1/generate", json=BODY, headers=key)
        assert again.status_code in (200, 202), again.text  # the master's job, not a new one
        assert client.get(f"/v1/jobs/{again.json()['id']}").json()["status"] == "queued"


def replica_online(redis: Redis, port: int) -> bool:
    """Whether the replica on ``port`` has synced with ``redis`` (``INFO replication``'s ``slaveN``)."""
    replicas = [value for value in redis.info("replication").values() if isinstance(value, dict)]
    return any(replica.get("port") == port and replica.get("state") == "online" for replica in replicas)


def test_a_submit_a_replica_acknowledged_is_accepted(tmp_path, redis_server, s3_server, redis):
    replica = RedisServer(tmp_path / "replica", options=("--replicaof", "127.0.0.1", str(redis_server.port)))
    replica.start()
    try:
        wait_until(lambda: replica_online(redis, replica.port), 20, "the replica's first sync")
        settings = api_settings(redis_server, s3_server, models=[IDLE], default_model="idle-sd",
                                redis_wait_replicas=1, redis_replica_wait_ms=2000)  # fmt: skip
        with serve(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=30) as client:
            accepted = client.post("/v1/generate", json=BODY)
            assert accepted.status_code == 202, accepted.text
    finally:
        replica.stop()


def test_the_api_says_at_start_up_when_redis_has_fewer_replicas_than_submits_wait_for(redis):
    assert replication_problem(redis, 0) is None
    assert replication_problem(redis, 1) == (
        "Redis has 0 replica(s) in sync; submits wait for 1 (LATENTQ_REDIS_WAIT_REPLICAS)"
    )
