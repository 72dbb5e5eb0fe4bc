"""A Redis outage, with real processes: Redis is SIGKILLed under a busy worker (or a dispatcher in
the middle of a delivery) and restarted from its append-only file; the API answers 503 meanwhile,
the worker and the dispatcher ride it out, and the job or delivery in flight still ends (recorded,
or run again through its lease)."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from latentq_dev.devstack import RedisServer, wait_until
from tests.conftest import API_KEY, api_settings, running_worker, serve, service_env, wait_for_job, worker_env
from tests.integration.webhook_harness import Dispatcher, Receiver

LONG = {"prompt": "a lighthouse", "width": 128, "height": 128, "steps": 150, "seed": 4}


@pytest.mark.slow
def test_a_busy_worker_rides_out_a_redis_restart(tmp_path, s3_server, models_dir, tiny_model):
    redis = RedisServer(tmp_path / "redis", durable=True).start()
    env = worker_env(redis, s3_server, models_dir, "tiny-sd", worker_lost_s="4", warmup="false")
    try:
        with (
            serve(api_settings(redis, s3_server)) as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client,
            running_worker(env, tmp_path / "worker.log", "tiny-sd") as worker,
        ):
            job_id = client.post("/v1/generate", json=LONG).json()["id"]
            wait_until(lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "running", 60, "the job")
            time.sleep(1.5)  # the record, on disk (AOF, fsync every second)
            redis.process.popen.send_signal(signal.SIGKILL)
            redis.process.popen.wait()
            down = client.get(f"/v1/jobs/{job_id}")
            assert down.status_code == 503 and down.json()["error"]["name"] == "service_unavailable"
            assert down.headers["retry-after"] == "1"
            time.sleep(2)
            redis = RedisServer(tmp_path / "redis", port=redis.port, durable=True).start()

            done = wait_for_job(client, job_id, timeout_s=120)
            assert done["status"] == "succeeded", done
            assert worker.popen.poll() is None  # it never exited
            after = client.post("/v1/generate", json={**LONG, "steps": 2}).json()["id"]
            assert wait_for_job(client, after, timeout_s=60)["status"] == "succeeded"
    finally:
        redis.stop()


@pytest.mark.slow
def test_a_dispatcher_rides_out_a_redis_restart_in_the_middle_of_a_delivery(
    tmp_path, s3_server, models_dir, tiny_model
):
    redis = RedisServer(tmp_path / "redis", durable=True).start()
    receiver = Receiver()
    receiver.delays["/slow"] = [3.0]  # the first delivery is still being sent when Redis dies
    dispatcher = Dispatcher(
        service_env(redis, s3_server, webhook_allowed_hosts="127.0.0.1", webhook_retry_schedule_s="1,1",
                    worker_lost_s="3", webhook_timeout_s="5"),
        tmp_path / "dispatcher.log",
    )  # fmt: skip
    env = worker_env(redis, s3_server, models_dir, "tiny-sd", warmup="false")
    settings = api_settings(redis, s3_server, webhook_allowed_hosts=("127.0.0.1",))
    try:
        dispatcher.start()
        with (
            serve(settings) as url,
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client,
            running_worker(env, tmp_path / "worker.log", "tiny-sd"),
        ):
            job_id = client.post(
                "/v1/generate", json={**LONG, "steps": 2, "webhook_url": receiver.url("/slow")}
            ).json()["id"]
            receiver.wait("/slow", 1)
            time.sleep(1.2)  # the delivery's lease, on disk (AOF, fsync every second)
            redis.process.popen.send_signal(signal.SIGKILL)
            redis.process.popen.wait()
            time.sleep(2)
            redis = RedisServer(tmp_path / "redis", port=redis.port, durable=True).start()

            # The delivery is sent again (same webhook-id) or its answer recorded; the dispatcher
            # lives on and delivers the next job's webhook too.
            sent = receiver.wait("/slow", 2, timeout_s=60)
            assert sent[0]["headers"]["webhook-id"] == sent[1]["headers"]["webhook-id"]
            assert dispatcher.process.popen.poll() is None  # it never exited
            client.post("/v1/generate", json={**LONG, "steps": 2, "webhook_url": receiver.url("/after")})
            assert receiver.wait("/after", 1, timeout_s=60)
            assert wait_for_job(client, job_id)["status"] == "succeeded"
    finally:
        dispatcher.stop()
        receiver.server.shutdown()
        redis.stop()
