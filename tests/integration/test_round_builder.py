"""Pipelined rounds with real worker processes and real signals: while a round samples, the worker
claims the next round's jobs (with their leases); a worker killed holding such a round loses none of
its jobs, and a warm shutdown runs the round it prepared and leaves the rest queued."""

from __future__ import annotations

import json
import signal
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
import pytest
from redis import Redis
from rq import Queue, Worker

from latentq.keys import LEASE_HOLDERS, LEASES, job_events_key, queue_name
from latentq_dev.devstack import Process, wait_until
from tests.conftest import API_KEY, api_settings, serve, wait_for_job, worker_env

#: A model served only by this module's workers, so no other test's worker takes its jobs.
MODEL = {"id": "pipelined-sd", "source": "embedded:tiny-sd", "family": "sd1",
         "limits": {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576}}  # fmt: skip
#: A round that samples for seconds: the next is prepared meanwhile.
LONG = {"model": "pipelined-sd", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 150, "seed": 4}
#: Quick jobs that batch with each other (not with LONG: other steps).
SHORT = {**LONG, "steps": 2}


@pytest.fixture(scope="module")
def api(redis_server, s3_server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        serve(api_settings(redis_server, s3_server, models=[MODEL])) as url,
        httpx.Client(base_url=url, headers=headers, timeout=30) as client,
    ):
        yield client


@contextmanager
def workers(redis_server, s3_server, models_dir, tmp_path, **settings) -> Iterator[Callable[[], Process]]:
    """Yield a function that starts one more worker of ``pipelined-sd`` and waits until it listens;
    stop every one started at the end."""
    started: list[Process] = []
    redis = Redis.from_url(redis_server.url)
    queue = Queue(queue_name("pipelined-sd"), connection=redis)

    def start() -> Process:
        env = worker_env(redis_server, s3_server, models_dir, "pipelined-sd", models=json.dumps([MODEL]),
                         worker_lost_s="3", warmup="false", **settings)  # fmt: skip
        name = env["LATENTQ_WORKER_NAME"] = f"pipelined-{uuid.uuid4().hex[:8]}"
        process = Process.start(name, [sys.executable, "-m", "worker"], tmp_path / f"{name}.log", env)
        started.append(process)
        listening = lambda: name in {worker.name for worker in Worker.all(connection=redis, queue=queue)}  # noqa: E731
        wait_until(listening, 120, "the worker", process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def sampling(client: httpx.Client, job_id: str, timeout_s: float = 120) -> None:
    """Wait until the job samples (a few steps made)."""
    deadline = time.monotonic() + timeout_s
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] != "running" or (
        job["progress"] or {"step": 0}
    )["step"] < 3:
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.02)


def claimed_by(redis: Redis, worker: str, job_ids: list[str], timeout_s: float = 30) -> None:
    """Wait until ``worker`` holds the lease of each of ``job_ids``."""
    holders = lambda: [redis.hget(LEASE_HOLDERS, job_id) for job_id in job_ids]  # noqa: E731
    wait_until(lambda: holders() == [worker.encode()] * len(job_ids), timeout_s, "the claims")


def terminal_events(redis: Redis, job_id: str) -> list[str]:
    names = [fields[b"event"].decode() for _, fields in redis.xrange(job_events_key(job_id))]
    return [name for name in names if name in ("succeeded", "failed", "canceled")]


@pytest.mark.slow
@pytest.mark.timeout(900)  # a loaded CI machine samples the long job slowly
def test_the_next_round_is_claimed_while_one_samples_and_a_warm_shutdown_runs_it(
    api, redis, redis_server, s3_server, models_dir, tiny_model, tmp_path
):
    queue = Queue(queue_name("pipelined-sd"), connection=redis)
    with workers(
        redis_server, s3_server, models_dir, tmp_path, max_batch="2", drain_timeout_s="300"
    ) as start:
        worker = start()
        long_id = api.post("/v1/generate", json=LONG).json()["id"]
        sampling(api, long_id)
        ids = [api.post("/v1/generate", json={**SHORT, "seed": seed}).json()["id"] for seed in (1, 2, 3)]
        # Claimed while the first round still samples: the next round (two images) is prepared.
        claimed_by(redis, worker.name, ids[:2])
        assert api.get(f"/v1/jobs/{long_id}").json()["status"] == "running"
        assert queue.get_job_ids() == ids[2:]

        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=300) == 0
        jobs = [api.get(f"/v1/jobs/{job_id}").json() for job_id in [long_id, *ids]]
        # The round it prepared ran; the job it had not taken waits in the queue for another worker.
        assert [(job["status"], job["attempt"]) for job in jobs[:3]] == [("succeeded", 1)] * 3, jobs
        assert jobs[1]["batch_size"] == jobs[2]["batch_size"] == 2
        assert jobs[3]["status"] == "queued" and queue.get_job_ids() == ids[2:]
        assert redis.zscore(LEASES, ids[2]) is None
        start()
        assert wait_for_job(api, ids[2], timeout_s=300)["status"] == "succeeded"
    assert all(terminal_events(redis, job_id) == ["succeeded"] for job_id in [long_id, *ids])


@pytest.mark.slow
@pytest.mark.timeout(900)  # a loaded CI machine samples the long job slowly
def test_a_worker_killed_holding_a_prepared_round_loses_none_of_its_jobs(
    api, redis, redis_server, s3_server, models_dir, tiny_model, tmp_path
):
    with workers(redis_server, s3_server, models_dir, tmp_path, max_batch="2") as start:
        worker = start()
        long_id = api.post("/v1/generate", json=LONG).json()["id"]
        sampling(api, long_id)
        ids = [api.post("/v1/generate", json={**SHORT, "seed": seed}).json()["id"] for seed in (4, 5)]
        claimed_by(redis, worker.name, ids)
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait(timeout=10)
        start()
        jobs = [wait_for_job(api, job_id, timeout_s=300) for job_id in [long_id, *ids]]
    # Each ran again once (a run again runs alone), and ended exactly once.
    assert [(job["status"], job["attempt"]) for job in jobs] == [("succeeded", 2)] * 3, jobs
    assert all(terminal_events(redis, job_id) == ["succeeded"] for job_id in [long_id, *ids])
    assert all(redis.zscore(LEASES, job_id) is None for job_id in [long_id, *ids])
