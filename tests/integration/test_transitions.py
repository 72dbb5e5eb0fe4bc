"""The job state machine against real Redis and RQ: terminal is final, late writes never re-create
a record, and the reaper recovers a lost worker's jobs exactly once, keeping RQ's lists truthful."""

from __future__ import annotations

import uuid

import pytest
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.registry import FailedJobRegistry
from rq.serializers import JSONSerializer

from latentq.contract import GENERATE_FUNCTION, JobError, JobSpec, WebhookTarget, WeightedPrompt
from latentq.keys import LEASES, WEBHOOK_QUEUE, job_events_key, job_key, preview_key
from latentq.leases import Leases
from latentq.reaper import Reaper
from latentq.records import JobRecords
from latentq.rq_writer import queue_job
from latentq.storage import STORAGE_ERRORS, ImageStore
from tests.conftest import api_settings


def make_spec(webhook: bool = True) -> JobSpec:
    target = WebhookTarget(url="https://receiver.invalid/hook", events=["started", "completed"])
    return JobSpec(
        job_id=str(uuid.uuid4()), model="transitions", prompts=[WeightedPrompt(text="a", weight=1.0)],
        width=64, height=64, steps=2, cfg_scale=7.0, samples=1, seed=5, sampler="K_EULER",
        webhook=target if webhook else None,
    )  # fmt: skip


@pytest.fixture
def records(redis) -> JobRecords:
    return JobRecords(redis, retention_s=600)


def submit(records: JobRecords, spec: JobSpec, queue: str | None = None) -> None:
    """Write the job's record and, with ``queue``, its RQ job, as the API's submit does."""
    with records.redis.pipeline() as pipeline:
        records.create(spec, pipeline)
        if queue is not None:
            arguments = {"spec": spec.model_dump(mode="json")}
            queue_job(
                pipeline, queue, GENERATE_FUNCTION, arguments, job_id=spec.job_id, timeout=60,
                result_ttl=600, failure_ttl=600, description="t",
            )  # fmt: skip
        pipeline.execute()


def events(records: JobRecords, job_id: str) -> list[str]:
    return [fields[b"event"].decode() for _, fields in records.redis.xrange(job_events_key(job_id))]


def deliveries(records: JobRecords, job_id: str) -> list[str]:
    """The webhook events queued for ``job_id``, in order."""
    found = []
    for queued in Queue(WEBHOOK_QUEUE, connection=records.redis, serializer=JSONSerializer).get_jobs():
        if queued.kwargs["job_id"] == job_id:
            found.append(queued.kwargs["event"])
    return found


def test_a_job_ends_once_whatever_comes_after(records):
    spec = make_spec()
    submit(records, spec)
    assert records.mark_running(spec) is True
    assert records.cancel(spec) is True  # a cancel racing the end of the job: it wins, once
    assert records.mark_succeeded(spec, [], {}) is False
    assert records.mark_failed(spec, JobError(name="timeout", message="late")) is False
    assert records.cancel(spec) is False and records.mark_canceled(spec) is False
    records.progress(spec.job_id, 2, 2, publish=True)
    assert events(records, spec.job_id) == ["queued", "started", "canceled"]
    assert deliveries(records, spec.job_id) == ["started", "completed"]
    assert records.get(spec.job_id).status.value == "canceled"
    assert records.redis.hget(job_key(spec.job_id), "step") is None


def test_a_canceled_queued_job_is_never_started(records):
    spec = make_spec(webhook=False)
    submit(records, spec)
    assert records.cancel(spec) is True
    assert records.mark_running(spec) is False
    assert events(records, spec.job_id) == ["queued", "canceled"]


def test_writes_after_a_record_expired_never_recreate_it(records):
    spec = make_spec()
    submit(records, spec)
    records.redis.delete(job_key(spec.job_id), job_events_key(spec.job_id))
    assert records.mark_running(spec) is False
    assert records.mark_failed(spec, JobError(name="timeout", message="late")) is False
    records.progress(spec.job_id, 1, 2, publish=True, notify=True)
    records.preview(spec.job_id, 1, b"jpeg")
    for key in (job_key(spec.job_id), job_events_key(spec.job_id), preview_key(spec.job_id)):
        assert records.redis.exists(key) == 0, key
    assert deliveries(records, spec.job_id) == [] and records.get(spec.job_id) is None


def test_a_partial_hash_of_an_older_release_reads_as_expired(records):
    job_id = str(uuid.uuid4())
    records.redis.hset(job_key(job_id), mapping={"status": "running", "started_at": "x"})
    assert records.get(job_id) is None


def lost(records: JobRecords, spec: JobSpec, queue: Queue, attempt: int = 1) -> None:
    """Make ``spec``'s job look taken by a worker that then died: RQ handed it over (intermediate
    queue), it started (unless ``attempt`` is 0: claimed only), and its lease expired."""
    Queue.dequeue_any([queue], None, connection=records.redis, serializer=JSONSerializer)
    if attempt:
        records.redis.hset(job_key(spec.job_id), "attempt", attempt)
        assert records.mark_running(spec)
    seconds, _ = records.redis.time()
    records.redis.zadd(LEASES, {spec.job_id: seconds - 1})


def reaper(records: JobRecords, max_attempts: int = 3) -> Reaper:
    return Reaper(records, Leases(records.redis, "reaper", 30), max_attempts, interval_s=1)


def test_a_lost_running_job_goes_back_to_the_front_of_its_queue_once(records):
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec, other = make_spec(), make_spec()
    submit(records, spec, queue.name)
    submit(records, other, queue.name)
    lost(records, spec, queue)
    assert reaper(records).recover(spec.job_id) == "requeued"
    assert reaper(records).recover(spec.job_id) is None  # a second reaper finds nothing to do
    record = records.get(spec.job_id)
    assert (record.status.value, record.attempt) == ("queued", 2)
    assert queue.get_job_ids() == [spec.job_id, other.job_id]
    assert records.redis.lrange(queue.intermediate_queue_key, 0, -1) == []
    assert records.redis.zscore(LEASES, spec.job_id) is None
    assert Job.fetch(spec.job_id, connection=records.redis).get_status() == "queued"
    again, _ = Queue.dequeue_any([queue], None, connection=records.redis, serializer=JSONSerializer)
    assert again.id == spec.job_id  # RQ hands it out again
    assert records.mark_running(spec) is True and events(records, spec.job_id)[-2:] == ["requeued", "started"]


def test_a_job_lost_at_its_last_attempt_fails_worker_lost_in_rq_too(records):
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec = make_spec()
    submit(records, spec, queue.name)
    lost(records, spec, queue, attempt=2)
    assert reaper(records, max_attempts=2).recover(spec.job_id) == "failed"
    record = records.get(spec.job_id)
    assert record.status.value == "failed" and record.error.name == "worker_lost"
    assert Job.fetch(spec.job_id, connection=records.redis).get_status() == "failed"
    assert spec.job_id in FailedJobRegistry(queue.name, connection=records.redis).get_job_ids()
    assert queue.get_job_ids() == [] and deliveries(records, spec.job_id) == ["started", "completed"]
    assert [name for name in events(records, spec.job_id) if name == "failed"] == ["failed"]


def test_a_job_failed_worker_lost_leaves_no_images_its_runs_stored(records, redis_server, s3_server):
    store = ImageStore(api_settings(redis_server, s3_server))
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec = make_spec().model_copy(update={"samples": 2})
    submit(records, spec, queue.name)
    lost(records, spec, queue, attempt=2)
    store.put(f"{spec.job_id}/0.png", b"stored by the lost run", "image/png")  # it died before image 1
    failer = Reaper(
        records, Leases(records.redis, "reaper", 30), 2, interval_s=1, delete_objects=store.delete
    )
    assert failer.recover(spec.job_id) == "failed"
    with pytest.raises(STORAGE_ERRORS):
        store.get(f"{spec.job_id}/0.png")


def test_a_job_canceled_while_its_lost_worker_uploaded_leaves_no_images(records, redis_server, s3_server):
    store = ImageStore(api_settings(redis_server, s3_server))
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec = make_spec()
    submit(records, spec, queue.name)
    lost(records, spec, queue)
    store.put(f"{spec.job_id}/0.png", b"uploaded; its outcome never recorded", "image/png")
    assert records.cancel(spec)
    keeper = Reaper(
        records, Leases(records.redis, "reaper", 30), 3, interval_s=1, delete_objects=store.delete
    )
    assert keeper.recover(spec.job_id) == "ended"
    assert records.get(spec.job_id).status.value == "canceled"
    with pytest.raises(STORAGE_ERRORS):
        store.get(f"{spec.job_id}/0.png")


def test_a_claimed_job_that_never_started_goes_back_without_an_attempt(records):
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec = make_spec(webhook=False)
    submit(records, spec, queue.name)
    lost(records, spec, queue, attempt=0)
    assert reaper(records, max_attempts=1).recover(spec.job_id) == "requeued"
    assert (records.get(spec.job_id).attempt, queue.get_job_ids()) == (1, [spec.job_id])


def test_a_job_taken_off_its_queue_by_a_worker_that_died_at_once_is_adopted(records):
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec = make_spec(webhook=False)
    submit(records, spec, queue.name)
    Queue.dequeue_any([queue], None, connection=records.redis, serializer=JSONSerializer)  # then died
    seconds, _ = records.redis.time()
    reaper(records).run_once()
    assert seconds + 25 < records.redis.zscore(LEASES, spec.job_id) <= seconds + 31  # its clock runs


def test_a_lease_of_an_ended_job_is_dropped(records):
    spec = make_spec(webhook=False)
    submit(records, spec)
    assert records.mark_running(spec) and records.mark_succeeded(spec, [], {})
    seconds, _ = records.redis.time()
    records.redis.zadd(LEASES, {spec.job_id: seconds - 1})
    assert reaper(records).recover(spec.job_id) == "ended"
    assert records.redis.zscore(LEASES, spec.job_id) is None
    assert records.get(spec.job_id).status.value == "succeeded"


def test_a_lease_that_could_not_be_released_is_no_longer_renewed():
    # Redis went away as the job ended: the release fails, and the lease must run out (so the
    # reaper recovers the job), not be renewed by the worker's heartbeat for ever.
    leases = Leases(Redis.from_url("redis://127.0.0.1:1/0"), "worker-a", 30)
    leases.held = {"job-1", "job-2"}
    with pytest.raises(RedisError):
        leases.release(["job-1"])
    assert leases.held == {"job-2"}


def test_a_lost_run_cannot_write_once_its_job_runs_again(records):
    queue = Queue(f"latentq:t-{uuid.uuid4().hex[:8]}", connection=records.redis, serializer=JSONSerializer)
    spec = make_spec(webhook=False)
    submit(records, spec, queue.name)
    Queue.dequeue_any([queue], None, connection=records.redis, serializer=JSONSerializer)
    assert records.mark_running(spec, run="first")
    seconds, _ = records.redis.time()
    records.redis.zadd(LEASES, {spec.job_id: seconds - 1})  # its worker froze past its lease
    assert reaper(records).recover(spec.job_id) == "requeued"
    assert records.mark_running(spec, run="second")
    # The first run wakes up: none of its writes lands.
    records.progress(spec.job_id, 9, 9, publish=True, run="first")
    assert records.mark_succeeded(spec, [], {}, run="first") is False
    assert records.mark_failed(spec, JobError(name="timeout", message="x"), run="first") is False
    assert records.redis.hget(job_key(spec.job_id), "step") in (None, b"0")
    assert records.mark_succeeded(spec, [], {}, run="second") is True


def test_a_job_canceled_while_sampling_refunds_the_steps_it_did_not_run(records):
    from latentq.accounts import Accounts

    accounts = Accounts(records.redis)
    account = accounts.create_account(f"refund-{uuid.uuid4().hex[:8]}", "test")["id"]
    accounts.grant(account, 10, "test")
    spec, failed = make_spec(webhook=False), make_spec(webhook=False)
    for job, cost in ((spec, 4000), (failed, 2000)):  # thousandths: 4 and 2 credits, already charged
        with records.redis.pipeline() as pipeline:
            records.create(job, pipeline, account)
            pipeline.hset(job_key(job.job_id), "cost", cost)
            pipeline.hincrby(f"latentq:account:{account}", "balance", -cost)
            pipeline.execute()
    assert records.mark_running(spec) and records.mark_running(failed)
    records.progress(spec.job_id, 3, 4, publish=True)  # three of four steps run: one quarter back
    assert records.mark_canceled(spec)
    assert records.mark_failed(failed, JobError(name="generation_failed", message="x"))  # all back
    assert accounts.account(account)["credits"] == 10 - 4 - 2 + 1 + 2
    refunds = [(e["job"], e["amount"]) for e in accounts.ledger(account) if e["reason"] == "refund"]
    assert sorted(refunds) == sorted([(spec.job_id, 1.0), (failed.job_id, 2.0)])
