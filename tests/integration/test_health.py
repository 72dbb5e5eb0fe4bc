"""Liveness and readiness."""

from __future__ import annotations

import httpx
from rq import Queue, Worker

from latentq.keys import queue_name, worker_alive_key
from tests.conftest import API_KEY, api_settings, serve

ADMIN = {"Authorization": f"Bearer {API_KEY}"}


def test_healthz_needs_no_key(api_url):
    response = httpx.get(api_url + "/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_ready_with_redis_s3_and_a_live_worker(api_url, worker):
    response = httpx.get(api_url + "/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "checks": {"redis": "ok", "s3": "ok", "workers": "ok"}}
    # The operator's key (every scope) also sees the live workers of each model.
    details = httpx.get(api_url + "/readyz", headers=ADMIN).json()["details"]
    assert (details["redis"], details["s3"], details["workers"]["tiny-sd"]) == ("ok", "ok", "1 live")


def test_not_ready_without_a_worker_for_the_default_model(redis_server, s3_server):
    entry = {"id": "nobody-serves-this", "source": "/nowhere", "family": "sd1"}
    settings = api_settings(redis_server, s3_server, models=[entry], default_model="nobody-serves-this")
    with serve(settings) as url:
        response = httpx.get(url + "/readyz")
        detailed = httpx.get(url + "/readyz", headers=ADMIN)
        not_admin = httpx.get(url + "/readyz", headers={"Authorization": "Bearer lq_not-a-key"})
    assert response.status_code == 503 and response.headers["retry-after"] == "5"
    assert response.json()["checks"]["workers"] == "none" and "details" not in response.json()
    assert detailed.json()["details"]["workers"]["nobody-serves-this"] == "none"
    assert not_admin.status_code == 503 and "details" not in not_admin.json()


def test_not_ready_when_s3_refuses_our_credentials(redis_server, s3_server, worker):
    with serve(api_settings(redis_server, s3_server, s3_secret_access_key="wrong")) as url:
        response = httpx.get(url + "/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["s3"] == "unreachable"


def test_not_ready_and_submits_refused_when_redis_is_down(s3_server, redis_server):
    settings = api_settings(redis_server, s3_server, redis_url="redis://127.0.0.1:1/0")
    with serve(settings) as url:
        assert httpx.get(url + "/readyz").status_code == 503
        response = httpx.post(
            url + "/v1/generate",
            json={"prompt": "a", "width": 64, "height": 64},
            headers={"Authorization": "Bearer test-key-1"},
        )
    assert response.status_code == 503
    assert response.json()["error"]["name"] == "service_unavailable"


def test_a_registered_worker_counts_only_while_its_heartbeat_is_fresh(redis, redis_server, s3_server):
    # As a SIGKILLed worker leaves it: RQ's registration lives on (for minutes), the alive mark not.
    entry = {"id": "ghost-model", "source": "/nowhere", "family": "sd1"}
    queue = Queue(queue_name("ghost-model"), connection=redis)
    ghost = Worker([queue], connection=redis, name="ghost-worker")
    ghost.register_birth()
    settings = api_settings(redis_server, s3_server, models=[entry], default_model="ghost-model")
    try:
        with serve(settings) as url:
            stale = httpx.get(url + "/readyz")
            redis.set(worker_alive_key("ghost-worker"), 1, ex=30)  # what its heartbeat would write
            fresh = httpx.get(url + "/readyz")
    finally:
        ghost.register_death()
        redis.delete(worker_alive_key("ghost-worker"))
    assert stale.status_code == 503 and stale.json()["checks"]["workers"] == "none"
    assert fresh.status_code == 200 and fresh.json()["checks"]["workers"] == "ok"
