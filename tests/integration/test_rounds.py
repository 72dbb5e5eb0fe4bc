"""A round that fails to start puts the jobs it took back in the queue: none is lost."""

from __future__ import annotations

import uuid

import pytest
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from latentq.contract import JobSpec, WeightedPrompt
from latentq.rq_writer import queue_job
from worker.context import WarmState
from worker.warm_worker import WarmWorker


class FailingWorker(WarmWorker):
    """Fails to prepare the execution of one given job, as a Redis error mid-round would."""

    fail_on = ""

    def prepare_execution(self, job: Job):  # type: ignore[override]
        if job.id == self.fail_on:
            raise RuntimeError("simulated failure while starting the round")
        return super().prepare_execution(job)


def spec(seed: int) -> dict:
    return JobSpec(
        job_id=str(uuid.uuid4()), model="tiny-sd", prompts=[WeightedPrompt(text="a", weight=1.0)],
        width=64, height=64, steps=2, cfg_scale=7.0, samples=1, seed=seed, sampler="K_EULER",
    ).model_dump(mode="json")  # fmt: skip


def test_jobs_taken_by_a_round_that_fails_to_start_go_back_to_the_queue_in_order(redis):
    name = f"rounds-{uuid.uuid4().hex[:8]}"
    ids = []
    with redis.pipeline() as pipeline:
        for seed in range(1, 5):
            # A job that batches like a generation (it carries a spec) but runs a trivial function.
            ids.append(queue_job(pipeline, name, "builtins.dict", {"spec": spec(seed)}, timeout=60,
                                 result_ttl=60, failure_ttl=60, description=f"round job {seed}"))  # fmt: skip
        pipeline.execute()
    queue = Queue(name, connection=redis, serializer=JSONSerializer)
    # The jobs run a trivial function: they need no pipelines, storage, records or cancel watch.
    nothing = WarmState(pipelines={}, store=None, records=None, cancels=None)  # type: ignore[arg-type]
    worker = FailingWorker([queue], connection=redis, serializer=JSONSerializer, warm=nothing)
    worker.max_batch = 8
    worker.fail_on = ids[2]

    head, head_queue = Queue.dequeue_any([queue], None, connection=redis, serializer=JSONSerializer)
    with pytest.raises(RuntimeError, match="simulated"):
        worker.execute_job(head, head_queue)
    worker.drain()

    # The two jobs that started ran; the one that failed to start and the one after it are queued
    # again, at the front and in their order.
    assert [Job.fetch(job_id, connection=redis).get_status() for job_id in ids[:2]] == [
        "finished",
        "finished",
    ]
    assert queue.get_job_ids() == ids[2:]
