"""Pipelined rounds: while a round samples, the worker claims the next round's jobs (with their
leases) and starts them, and samples that round right after; a worker killed holding such a round
loses none of its jobs, and a warm shutdown runs the round it prepared and leaves the rest queued.

In this process against a real Redis and RQ (a pipeline that sleeps as it samples), then with real
worker processes, the tiny pipeline and real signals."""

from __future__ import annotations

import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import httpx
import pytest
from PIL import Image
from redis import Redis
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from latentq.contract import JobSpec, WeightedPrompt
from latentq.keys import LEASE_HOLDERS, LEASES, job_events_key, queue_name
from latentq.rq_writer import queue_job
from latentq_dev.devstack import wait_until
from tests.conftest import API_KEY, api_settings, serve, wait_for_job
from tests.integration.test_recovery import worker_processes
from worker.context import WarmState, current_context
from worker.metrics import ROUND_IDLE
from worker.warm_worker import WarmWorker

#: A model served only by this module's workers, so no other test's worker takes its jobs.
MODEL = {"id": "pipelined-sd", "source": "embedded:tiny-sd", "family": "sd1",
         "limits": {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576}}  # fmt: skip
#: A round that samples for seconds: the next is prepared meanwhile.
LONG = {"model": "pipelined-sd", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 150, "seed": 4}
#: Quick jobs that batch with each other (not with LONG: other steps).
SHORT = {**LONG, "steps": 2}


class SleepyPipeline:
    """Samples each call in ``seconds`` (what a slow step callback would cost); notes each call's
    seeds and, at its end, the jobs the worker then held (leased)."""

    def __init__(self, redis: Redis, seconds: float) -> None:
        self.redis, self.seconds = redis, seconds
        self.calls: list[list[int]] = []
        self.held_at_end: list[set[str]] = []
        #: Called at the start of each call (a test's hook).
        self.on_call: Callable[[], None] = lambda: None

    def generate(self, spec: JobSpec, inputs: dict, on_step: object = None) -> list:
        return self.generate_batch([(spec, on_step)])[0]

    def generate_batch(self, jobs: list) -> list[list]:
        self.on_call()
        time.sleep(self.seconds)
        self.calls.append(sorted(spec.seed for spec, _ in jobs))  # in the order their threads came
        self.held_at_end.append({key.decode() for key in self.redis.hkeys(LEASE_HOLDERS)})
        return [[Image.new("RGB", (spec.width, spec.height))] * spec.samples for spec, _ in jobs]


def sample_with_the_round(spec: dict) -> dict:
    """An RQ job (by dotted path) that samples through its round, as a generation job does."""
    context = current_context()
    job = JobSpec.model_validate(spec)
    context.sampler.sample(context.warm.pipelines[job.model], job, {}, None)
    return {"seed": job.seed}


def in_process_worker(
    redis: Redis, seconds: float, count: int
) -> tuple[WarmWorker, SleepyPipeline, list[str]]:
    """A worker of ``count`` queued jobs that batch together, its pipeline sampling ``seconds`` a call."""
    name = f"pipelined-{uuid.uuid4().hex[:8]}"
    ids = []
    with redis.pipeline() as batch:
        for seed in range(1, count + 1):
            spec = JobSpec(
                job_id=str(uuid.uuid4()), model="pipelined-sd", prompts=[WeightedPrompt(text="a", weight=1)],
                width=64, height=64, steps=2, cfg_scale=7.0, samples=1, seed=seed, sampler="K_EULER",
            ).model_dump(mode="json")  # fmt: skip
            ids.append(queue_job(batch, name, f"{__name__}.sample_with_the_round", {"spec": spec}, timeout=60,
                                 result_ttl=60, failure_ttl=60, description=f"job {seed}"))  # fmt: skip
        batch.execute()
    pipeline = SleepyPipeline(redis, seconds)
    warm = WarmState(pipelines={"pipelined-sd": pipeline}, store=None, records=None, cancels=None)  # type: ignore[arg-type,dict-item]
    queue = Queue(name, connection=redis, serializer=JSONSerializer)
    worker = WarmWorker([queue], connection=redis, serializer=JSONSerializer, warm=warm)
    worker.max_batch = 2
    worker.last_cleaned_at = datetime.now(UTC)  # RQ's loop runs its maintenance as it starts
    return worker, pipeline, ids


def test_the_next_round_is_claimed_and_started_while_one_samples_and_sampled_right_after(redis):
    worker, pipeline, ids = in_process_worker(redis, seconds=0.5, count=5)
    [queue] = worker.queues
    rounds_before = ROUND_IDLE._sum.get(), sum(bucket.get() for bucket in ROUND_IDLE._buckets)
    head, head_queue = Queue.dequeue_any([queue], None, connection=redis, serializer=JSONSerializer)
    worker.execute_job(head, head_queue)  # all three rounds: RQ's loop is not needed in between
    worker.drain()

    assert pipeline.calls == [[1, 2], [3, 4], [5]]
    # At the end of each call, the next round's jobs were already claimed, besides the call's own.
    assert pipeline.held_at_end == [set(ids[:4]), set(ids[2:]), {ids[4]}]
    assert [Job.fetch(job_id, connection=redis).get_status() for job_id in ids] == ["finished"] * 5
    assert queue.get_job_ids() == [] and redis.zscore(LEASES, ids[4]) is None
    # Each round's idle gap counted in the worker's metrics.
    assert sum(bucket.get() for bucket in ROUND_IDLE._buckets) == rounds_before[1] + 3


def test_a_warm_shutdown_while_a_round_samples_claims_no_more_and_loses_nothing(redis):
    worker, pipeline, ids = in_process_worker(redis, seconds=0.3, count=6)
    [queue] = worker.queues

    def stop() -> None:  # SIGTERM's flag, set as the first round samples
        worker.stopping = True

    pipeline.on_call = stop
    head, head_queue = Queue.dequeue_any([queue], None, connection=redis, serializer=JSONSerializer)
    worker.execute_job(head, head_queue)
    worker.drain()

    # The first round ran, and the round prepared before the flag (if any); every other job is
    # queued, in order, with no lease: each job ran once or waits.
    ran = [seed for call in pipeline.calls for seed in call]
    assert ran == list(range(1, len(ran) + 1)) and 2 <= len(ran) <= 4, pipeline.calls
    statuses = [Job.fetch(job_id, connection=redis).get_status() for job_id in ids]
    assert statuses == ["finished"] * len(ran) + ["queued"] * (6 - len(ran))
    assert queue.get_job_ids() == ids[len(ran) :]
    assert not [job_id for job_id in ids if redis.zscore(LEASES, job_id) is not None]


@pytest.fixture(scope="module")
def api(redis_server, s3_server) -> Iterator[httpx.Client]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with (
        serve(api_settings(redis_server, s3_server, models=[MODEL])) as url,
        httpx.Client(base_url=url, headers=headers, timeout=30) as client,
    ):
        yield client


def workers(redis_server, s3_server, models_dir, tmp_path, **settings):
    """``worker_processes`` of ``pipelined-sd`` (rounds of up to ``LATENTQ_MAX_BATCH`` images)."""
    return worker_processes(redis_server, s3_server, models_dir, tmp_path, MODEL, **settings)


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


def statuses(client: httpx.Client, job_ids: list[str]) -> list[str]:
    return [client.get(f"/v1/jobs/{job_id}").json()["status"] for job_id in job_ids]


def terminal_events(redis: Redis, job_id: str) -> list[str]:
    names = [fields[b"event"].decode() for _, fields in redis.xrange(job_events_key(job_id))]
    return [name for name in names if name in ("succeeded", "failed", "canceled")]


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a loaded CI machine samples the long job slowly
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
        assert wait_for_job(api, ids[2], timeout_s=600)["status"] == "succeeded"
    assert all(terminal_events(redis, job_id) == ["succeeded"] for job_id in [long_id, *ids])


@pytest.mark.slow
@pytest.mark.timeout(1500)  # a loaded CI machine samples the long job slowly
def test_a_worker_killed_holding_a_prepared_round_loses_none_of_its_jobs(
    api, redis, redis_server, s3_server, models_dir, tiny_model, tmp_path
):
    with workers(redis_server, s3_server, models_dir, tmp_path, max_batch="2") as start:
        worker = start()
        long_id = api.post("/v1/generate", json=LONG).json()["id"]
        sampling(api, long_id)
        ids = [api.post("/v1/generate", json={**SHORT, "seed": seed}).json()["id"] for seed in (4, 5)]
        claimed_by(redis, worker.name, ids)
        # Claimed, their threads started; they start (running, their time limits) once it sampled.
        assert statuses(api, [long_id, *ids]) == ["running", "queued", "queued"]
        worker.popen.send_signal(signal.SIGKILL)
        worker.popen.wait(timeout=10)
        start()
        jobs = [wait_for_job(api, job_id, timeout_s=600) for job_id in [long_id, *ids]]
    # The long job ran again (its lost run counts an attempt; the others had not started), and each
    # ended exactly once.
    assert [(job["status"], job["attempt"]) for job in jobs] == [("succeeded", 2), ("succeeded", 1),
                                                                 ("succeeded", 1)], jobs  # fmt: skip
    assert all(terminal_events(redis, job_id) == ["succeeded"] for job_id in [long_id, *ids])
    assert all(redis.zscore(LEASES, job_id) is None for job_id in [long_id, *ids])
