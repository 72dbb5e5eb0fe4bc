"""A Redis outage, with real processes: Redis is SIGKILLed under a busy worker and restarted from
its append-only file; the API answers 503 meanwhile, the worker rides it out, and the job in
flight still ends (recorded, or run again through its lease)."""

from __future__ import annotations

import signal
import time

import httpx
import pytest

from latentq_dev.devstack import RedisServer, wait_until
from tests.conftest import API_KEY, api_settings, running_worker, serve, wait_for_job, worker_env

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
