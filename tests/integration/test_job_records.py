"""Job records in Redis: the public view, kept truthful against RQ's own state."""

from __future__ import annotations

import uuid

from latentq.contract import JobSpec, JobStatus, WeightedPrompt
from latentq.keys import job_key, rq_job_key
from latentq.records import JobRecords


def make_spec() -> JobSpec:
    return JobSpec(
        job_id=str(uuid.uuid4()), model="tiny-sd", prompts=[WeightedPrompt(text="a", weight=1.0)],
        width=64, height=64,
        steps=2, cfg_scale=7.0, samples=1, seed=5, sampler="K_EULER",
    )  # fmt: skip


def create(records: JobRecords, spec: JobSpec) -> None:
    with records.redis.pipeline() as pipeline:
        records.create(spec, pipeline)
        pipeline.execute()


def test_record_expires_after_the_retention(redis):
    records = JobRecords(redis, retention_s=120)
    spec = make_spec()
    create(records, spec)
    records.mark_running(spec)
    assert 115 <= redis.ttl(job_key(spec.job_id)) <= 120


def test_a_job_rq_failed_behind_our_back_reads_as_worker_lost(redis):
    records = JobRecords(redis, retention_s=120)
    spec = make_spec()
    create(records, spec)
    records.mark_running(spec)
    # What RQ's registry clean-up writes when a worker died mid-job.
    redis.hset(rq_job_key(spec.job_id), "status", "failed")

    record = records.get(spec.job_id)

    assert record is not None
    assert record.status is JobStatus.FAILED
    assert record.error is not None and record.error.name == "worker_lost"


def test_a_finished_record_is_not_rewritten_by_rq_state(redis):
    records = JobRecords(redis, retention_s=120)
    spec = make_spec()
    create(records, spec)
    assert records.mark_running(spec) and records.mark_succeeded(spec, [], {})
    redis.hset(rq_job_key(spec.job_id), "status", "failed")
    record = records.get(spec.job_id)
    assert record is not None and record.status is JobStatus.SUCCEEDED
