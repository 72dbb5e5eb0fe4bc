"""Lost workers: a job whose worker is SIGKILLed mid-run is found through its expired lease and run
again by another worker, a bounded number of times, with real worker processes and real signals."""

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
MODEL = {"id": "recovery-sd", "source": "embedded:tiny-sd", "family": "sd1",
         "limits": {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576}}  # fmt: skip
#: Long enough to be killed in the middle of (hundreds of steps), short when run to the end.
LONG = {"model": "recovery-sd", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 150, "seed": 4}
SHORT = {**LONG, "steps": 2}
LOST_S = "3"


@pytest.fixture(scope="module")
def api(redis_server, s3_server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        serve(api_settings(redis_server, s3_server, models=[MODEL])) as url,
        httpx.Client(base_url=url, headers=headers, timeout=30) as client,
    ):
        yield client


@contextmanager
def worker_processes(
    redis_server, s3_server, models_dir, tmp_path, model: dict, **settings
) -> Iterator[Callable[..., Process]]:
    """Yield a function that starts one more worker of ``model`` (a registry entry) with ``settings``
    (and, unless told not to, waits until it listens); stop every one started at the end."""
    started: list[Process] = []
    redis = Redis.from_url(redis_server.url)
    queue = Queue(queue_name(model["id"]), connection=redis)

    def start(wait: bool = True) -> Process:
        env = worker_env(
            redis_server, s3_server, models_dir, model["id"], models=json.dumps([model]),
            worker_lost_s=LOST_S, warmup="false", **settings,
        )  # fmt: skip
        name = env["LATENTQ_WORKER_NAME"] = f"{model['id']}-{uuid.uuid4().hex[:8]}"
        argv = [sys.executable, "-m", "worker"]
        process = Process.start(name, argv, tmp_path / f"{name}.log", env)
        started.append(process)
        listening = lambda: name in {worker.name for worker in Worker.all(connection=redis, queue=queue)}  # noqa: E731
        if wait:
            wait_until(listening, 120, "the worker", process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.stop()


def workers(redis_server, s3_server, models_dir, tmp_path, **settings):
    """``worker_processes`` of ``recovery-sd``, one job at a time."""
    return worker_processes(redis_server, s3_server, models_dir, tmp_path, MODEL, max_batch="1", **settings)


def running(client: httpx.Client, job_id: str, attempt: int, timeout_s: float = 60) -> dict:
    """Wait until the job runs its ``attempt`` and has made a few steps; return it."""
    deadline = time.monotonic() + timeout_s
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        progress = job["progress"] or {"step": 0}
        if job["status"] == "running" and job["attempt"] == attempt and progress["step"] >= 3:
            return job
        assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
        time.sleep(0.02)


def holder(redis: Redis, job_id: str) -> str:
    """The name of the worker holding the job's lease (the one running it)."""
    return redis.hget(LEASE_HOLDERS, job_id).decode()


def terminal_events(redis: Redis, job_id: str) -> list[str]:
    names = [fields[b"event"].decode() for _, fields in redis.xrange(job_events_key(job_id))]
    return [name for name in names if name in ("succeeded", "failed", "canceled")]


@pytest.mark.slow
def test_a_killed_workers_job_runs_again_on_another_worker(api, redis, redis_server, s3_server, models_dir,
                                                         tiny_model, tmp_path):  # fmt: skip
    with workers(redis_server, s3_server, models_dir, tmp_path) as start:
        pool = {process.name: process for process in (start(), start())}  # one runs it, one waits
        job_id = api.post("/v1/generate", json=LONG).json()["id"]
        running(api, job_id, attempt=1)
        pool[holder(redis, job_id)].popen.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        done = wait_for_job(api, job_id, timeout_s=90)
        recovered_s = time.monotonic() - killed_at
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    assert [image["url"].split("?")[0].rsplit("/", 2)[-2:] for image in done["images"]] == [[job_id, "0.png"]]
    assert terminal_events(redis, job_id) == ["succeeded"]
    assert redis.zscore(LEASES, job_id) is None
    assert recovered_s < 60, recovered_s  # found within the lease, not RQ's 600 s maintenance


@pytest.mark.slow
def test_a_job_that_loses_its_worker_every_time_fails_worker_lost_and_the_queue_goes_on(
    api, redis, redis_server, s3_server, models_dir, tiny_model, tmp_path
):
    # Every process's reaper may recover the job, so the limit is the one they all run with: 3.
    with workers(redis_server, s3_server, models_dir, tmp_path) as start:
        pool = {process.name: process for process in (start(), start())}  # one runs it, one waits
        # Long enough (seconds a run) that no run ends while a spare worker starts.
        job_id = api.post("/v1/generate", json={**LONG, "width": 256, "height": 256}).json()["id"]
        for attempt in (1, 2, 3):
            running(api, job_id, attempt=attempt)
            pool.pop(holder(redis, job_id)).popen.send_signal(signal.SIGKILL)
            if attempt < 3:  # the waiting one takes the job back (or, after the third, fails it)
                spare = start(wait=False)  # not waited for: the next run is watched meanwhile
                pool[spare.name] = spare
        failed = wait_for_job(api, job_id, timeout_s=90)
        after = wait_for_job(api, api.post("/v1/generate", json=SHORT).json()["id"], timeout_s=90)
    assert failed["status"] == "failed" and failed["error"]["name"] == "worker_lost", failed
    assert failed["attempt"] == 3 and "after 3 attempts" in failed["error"]["message"]
    assert terminal_events(redis, job_id) == ["failed"]
    assert after["status"] == "succeeded"


@pytest.mark.slow
def test_sigterm_finishes_the_running_job_then_exits_0(api, redis_server, s3_server, models_dir, tiny_model,
                                                       tmp_path):  # fmt: skip
    with workers(redis_server, s3_server, models_dir, tmp_path, drain_timeout_s="60") as start:
        worker = start()
        job_id = api.post("/v1/generate", json=LONG).json()["id"]
        running(api, job_id, attempt=1)
        worker.popen.send_signal(signal.SIGTERM)
        assert worker.popen.wait(timeout=60) == 0
        done = api.get(f"/v1/jobs/{job_id}").json()
    assert done["status"] == "succeeded" and done["attempt"] == 1, done


@pytest.mark.slow
def test_a_drain_past_its_deadline_hands_the_job_back_and_exits_1(
    api, redis, redis_server, s3_server, models_dir, tiny_model, tmp_path
):
    with workers(redis_server, s3_server, models_dir, tmp_path, drain_timeout_s="0.5") as start:
        first = start()
        job_id = api.post("/v1/generate", json={**LONG, "steps": 150, "width": 256, "height": 256}).json()[
            "id"
        ]
        running(api, job_id, attempt=1)
        start()
        first.popen.send_signal(signal.SIGTERM)
        assert first.popen.wait(timeout=30) == 1
        done = wait_for_job(api, job_id, timeout_s=120)
    assert done["status"] == "succeeded" and done["attempt"] == 2, done
    assert terminal_events(redis, job_id) == ["succeeded"]
