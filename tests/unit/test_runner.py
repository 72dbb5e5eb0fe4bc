"""The runner: one job to its terminal record, with hand-written fakes for the pipeline, storage,
records and cancel watch (no Redis, no subprocess), and how it names what went wrong."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch
from botocore.exceptions import ClientError, EndpointConnectionError
from PIL import Image
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.timeouts import JobTimeoutException

from latentq.contract import JobSpec, JobStatus, WeightedPrompt
from worker.context import JobContext, WarmState
from worker.patient_store import PatientStore
from worker.rounds import SamplingRound
from worker.runner import MAX_ERROR_MESSAGE, classify_error, run_job


def spec(job_id: str = "job-1", **changes) -> JobSpec:
    values = dict(job_id=job_id, model="m", prompts=[WeightedPrompt(text="a", weight=1.0)], width=8,
                  height=8, steps=4, cfg_scale=7.0, samples=1, seed=5, sampler="K_EULER")  # fmt: skip
    return JobSpec(**{**values, **changes})


class FakeRecords:
    """Keeps every record write as (what, job id, detail)."""

    def __init__(
        self, canceled: tuple[str, ...] = (), refuse: tuple[str, ...] = (), stored: JobStatus | None = None
    ) -> None:
        self.writes: list[tuple[str, str, object]] = []
        self.canceled = canceled
        #: Changes the job's state machine refuses, and the status the record then holds.
        self.refuse, self.stored = refuse, stored

    def cancel_requested(self, *job_ids: str) -> list[str]:
        return [job_id for job_id in job_ids if job_id in self.canceled]

    def _write(self, what: str, spec: JobSpec, detail: object = None) -> bool:
        if what in self.refuse:
            return False
        self.writes.append((what, spec.job_id, detail))
        return True

    def status(self, job_id: str) -> JobStatus | None:
        return self.stored

    def mark_running(self, spec: JobSpec, run: str = "") -> bool:
        return self._write("running", spec)

    def progress(self, job_id, step, total_steps, publish, eta_s=0.0, notify=False, run=None) -> None:
        if publish:
            self.writes.append(("progress", job_id, step))

    def preview(self, job_id, step, jpeg, run=None) -> None:
        self.writes.append(("preview", job_id, step))

    def mark_canceled(self, spec: JobSpec, run=None) -> bool:
        return self._write("canceled", spec)

    def mark_failed(self, spec: JobSpec, error, run=None) -> bool:
        return self._write("failed", spec, error.name)

    def mark_succeeded(self, spec: JobSpec, images, timings, batch_size=1, run=None) -> bool:
        return self._write("succeeded", spec, ([image.key for image in images], batch_size))

    def of(self, job_id: str) -> list[tuple[str, object]]:
        return [(what, detail) for what, of, detail in self.writes if of == job_id]


class FakeStore:
    """Objects in a dict; every put fails with ``failure`` when set."""

    def __init__(self, failure: Exception | None = None, failures: int = 1_000_000) -> None:
        self.objects: dict[str, bytes] = {}
        self.failure, self.failures = failure, failures

    def _maybe_fail(self) -> None:
        if self.failure is not None and self.failures > 0:
            self.failures -= 1
            raise self.failure

    def put(self, key: str, data: bytes, content_type: str) -> None:
        self._maybe_fail()
        self.objects[key] = data

    def get(self, key: str) -> bytes:
        self._maybe_fail()
        return self.objects[key]

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.objects.pop(key, None)


class FakeCancels:
    """Hands each watched job an event; ``cancel`` sets it, as the cancel watch does."""

    def __init__(self) -> None:
        self.events: dict[str, threading.Event] = {}

    @contextmanager
    def watching(self, job_id: str) -> Iterator[threading.Event]:
        self.events[job_id] = threading.Event()
        yield self.events[job_id]

    def cancel(self, job_id: str) -> None:
        self.events[job_id].set()


class FakePipeline:
    """Steps through ``spec.steps`` calling ``on_step``; ``at_step`` runs a callable at a given step
    (to raise, or to cancel); jobs named in ``broken`` fail whenever sampled."""

    def __init__(self, at_step: dict[int, object] | None = None, broken: tuple[str, ...] = ()) -> None:
        self.at_step = at_step or {}
        self.broken = broken
        self.calls: list[list[str]] = []

    def _steps(self, spec: JobSpec, on_step) -> bool:
        for step in range(1, spec.steps + 1):
            if step in self.at_step:
                self.at_step[step](spec)  # type: ignore[operator]
            if on_step is not None and on_step(step, spec.steps, None):
                return True
        return False

    def generate(self, spec, inputs, on_step=None):
        self.calls.append([spec.job_id])
        if spec.job_id in self.broken:
            raise ValueError(f"{spec.job_id} is broken")
        self._steps(spec, on_step)
        return [Image.new("RGB", (spec.width, spec.height), "red") for _ in range(spec.samples)]

    def generate_batch(self, members):
        self.calls.append([member.job_id for member, _ in members])
        if any(member.job_id in self.broken for member, _ in members):
            raise ValueError("the batch failed")
        return [[Image.new("RGB", (s.width, s.height)) for _ in range(s.samples)] for s, _ in members]


def warm(pipeline: FakePipeline, store: FakeStore | None = None, records: FakeRecords | None = None):
    return WarmState(
        {"m": pipeline}, store or FakeStore(), records or FakeRecords(), FakeCancels(), progress_interval_s=0
    )


def test_a_job_runs_to_succeeded_with_its_images_stored_under_their_keys():
    state = warm(FakePipeline())
    stored = run_job(JobContext(state), spec(samples=2, output_format="webp"))
    assert [image.key for image in stored] == ["job-1/0.webp", "job-1/1.webp"]
    assert [image.seed for image in stored] == [5, 6]
    assert set(state.store.objects) == {"job-1/0.webp", "job-1/1.webp"}
    assert state.records.of("job-1") == [
        ("running", None), *[("progress", step) for step in range(1, 5)],
        ("succeeded", (["job-1/0.webp", "job-1/1.webp"], 1)),
    ]  # fmt: skip


def test_a_failing_pipeline_fails_the_job_with_a_named_error_and_raises_for_rq():
    state = warm(FakePipeline(broken=("job-1",)))
    with pytest.raises(ValueError, match="broken"):
        run_job(JobContext(state), spec())
    assert state.records.of("job-1")[-1] == ("failed", "generation_failed")


def test_a_failed_run_deletes_the_images_an_earlier_lost_run_stored():
    state = warm(FakePipeline(broken=("job-1",)))
    state.store.objects.update({"job-1/0.png": b"run 1", "job-2/0.png": b"another job"})
    with pytest.raises(ValueError, match="broken"):
        run_job(JobContext(state), spec())
    assert set(state.store.objects) == {"job-2/0.png"}


class BlinkingRecords(FakeRecords):
    """Records whose first ``misses`` succeeded writes find Redis unreachable."""

    def __init__(self, misses: int) -> None:
        super().__init__()
        self.misses = misses

    def mark_succeeded(self, spec: JobSpec, images, timings, batch_size=1, run=None) -> bool:
        if self.misses:
            self.misses -= 1
            raise RedisConnectionError("Connection refused")
        return super().mark_succeeded(spec, images, timings, batch_size, run)


def test_a_stored_outcome_is_recorded_through_a_short_redis_outage_not_left_to_a_rerun():
    state = warm(FakePipeline(), records=BlinkingRecords(misses=1))
    stored = run_job(JobContext(state), spec())
    assert state.records.of("job-1")[-1] == ("succeeded", (["job-1/0.png"], 1)) and len(stored) == 1


def test_an_outcome_redis_cannot_take_by_the_deadline_leaves_the_job_to_its_lease():
    state = warm(FakePipeline(), records=BlinkingRecords(misses=1))
    with pytest.raises(RedisConnectionError):
        run_job(JobContext(state, deadline=time.monotonic()), spec())
    assert "succeeded" not in [what for what, _ in state.records.of("job-1")]


def test_an_unserved_model_fails_the_job_clearly():
    state = warm(FakePipeline())
    with pytest.raises(LookupError, match="not model 'other'"):
        run_job(JobContext(state), spec(model="other"))
    assert state.records.of("job-1") == [("running", None), ("failed", "generation_failed")]


def test_a_store_still_down_at_the_deadline_fails_the_job_with_storage_error():
    state = warm(FakePipeline(), FakeStore(EndpointConnectionError(endpoint_url="http://s3")))
    with pytest.raises(EndpointConnectionError):
        run_job(JobContext(state, deadline=time.monotonic() + 0.1), spec())  # no room for a retry
    assert state.records.of("job-1")[-1] == ("failed", "storage_error")


def test_a_short_storage_outage_is_waited_out_within_the_deadline():
    store = FakeStore(EndpointConnectionError(endpoint_url="http://s3"), failures=2)
    waits: list[float] = []
    patient = PatientStore(store, deadline=100.0, clock=lambda: sum(waits), sleep=waits.append)
    patient.put("k", b"data", "image/png")
    assert store.objects == {"k": b"data"} and waits == [0.5, 1.0]  # backing off


def test_storage_retries_stop_when_the_next_wait_would_pass_the_deadline():
    store = FakeStore(EndpointConnectionError(endpoint_url="http://s3"))
    waits: list[float] = []
    patient = PatientStore(store, deadline=5.0, clock=lambda: sum(waits), sleep=waits.append)
    with pytest.raises(EndpointConnectionError):
        patient.get("k")
    assert waits == [0.5, 1.0, 2.0]  # the next, 4 s, would end after the deadline


def test_a_job_its_state_machine_will_not_start_is_dropped_unsampled():
    pipeline = FakePipeline()
    state = warm(pipeline, records=FakeRecords(refuse=("running",)))  # canceled or expired meanwhile
    assert run_job(JobContext(state), spec()) == []
    assert state.records.of("job-1") == [] and pipeline.calls == []


def test_images_of_a_job_canceled_while_it_ran_are_deleted_not_recorded():
    records = FakeRecords(refuse=("succeeded",), stored=JobStatus.CANCELED)  # canceled at the last step
    state = warm(FakePipeline(), records=records)
    assert run_job(JobContext(state), spec(samples=2)) == []
    assert state.store.objects == {}  # no orphans


def test_a_run_that_lost_its_job_to_another_run_leaves_that_runs_images_alone():
    records = FakeRecords(refuse=("succeeded",), stored=JobStatus.RUNNING)  # requeued, running elsewhere
    state = warm(FakePipeline(), records=records)
    assert run_job(JobContext(state), spec()) == []
    assert set(state.store.objects) == {"job-1/0.png"}  # the same key the other run writes


def test_a_job_canceled_before_it_starts_never_samples():
    pipeline = FakePipeline()
    state = warm(pipeline, records=FakeRecords(canceled=("job-1",)))
    assert run_job(JobContext(state), spec()) == []
    assert state.records.of("job-1") == [("canceled", None)] and pipeline.calls == []


def test_a_job_canceled_while_sampling_stops_at_the_next_step_and_stores_nothing():
    state = warm(FakePipeline())
    state.pipelines["m"].at_step[2] = lambda job: state.cancels.cancel(job.job_id)
    assert run_job(JobContext(state), spec(steps=10)) == []
    assert state.records.of("job-1") == [
        ("running", None),
        ("progress", 1),
        ("progress", 2),
        ("canceled", None),
    ]
    assert state.store.objects == {}


def test_a_time_limit_raised_during_sampling_fails_the_job_with_timeout():
    def time_is_up(_job):
        raise JobTimeoutException("Task exceeded maximum timeout value (1 seconds)")

    state = warm(FakePipeline(at_step={3: time_is_up}))
    with pytest.raises(JobTimeoutException):
        run_job(JobContext(state), spec())
    assert state.records.of("job-1") == [("running", None), ("progress", 1), ("progress", 2),
                                         ("failed", "timeout")]  # fmt: skip


def test_in_a_round_a_failing_member_fails_alone_and_its_batch_mates_succeed():
    pipeline = FakePipeline(broken=("b",))
    state = warm(pipeline)
    specs = [spec("a"), spec("b"), spec("c")]
    round_ = SamplingRound(len(specs))
    outcomes: dict[str, object] = {}

    def job_thread(job: JobSpec) -> None:
        seat = round_.seat()
        try:
            outcomes[job.job_id] = run_job(JobContext(state, seat), job)
        except ValueError as error:
            outcomes[job.job_id] = error
        finally:
            seat.leave()

    threads = [threading.Thread(target=job_thread, args=(job,)) for job in specs]
    for thread in threads:
        thread.start()
    round_.run(max_images=8)
    for thread in threads:
        thread.join(10)
    # One batched call first (its members in the order their threads took their seats), then each alone.
    assert sorted(pipeline.calls[0]) == ["a", "b", "c"]
    assert sorted(pipeline.calls[1:]) == [["a"], ["b"], ["c"]]
    assert state.records.of("a")[-1] == ("succeeded", (["a/0.png"], 1))
    assert state.records.of("c")[-1] == ("succeeded", (["c/0.png"], 1))
    assert state.records.of("b")[-1] == ("failed", "generation_failed") and isinstance(
        outcomes["b"], ValueError
    )


@pytest.mark.parametrize(
    ("error", "name"),
    [
        (JobTimeoutException("too long"), "timeout"),
        (torch.OutOfMemoryError("CUDA out of memory"), "out_of_memory"),
        (MemoryError(), "out_of_memory"),
        (EndpointConnectionError(endpoint_url="http://s3"), "storage_error"),
        (ClientError({"Error": {"Code": "403", "Message": "Forbidden"}}, "PutObject"), "storage_error"),
        (RuntimeError("mat1 and mat2 shapes cannot be multiplied"), "generation_failed"),
        (SystemExit(), "worker_lost"),
    ],
)
def test_errors_are_named(error, name):
    assert classify_error(error).name == name


def test_messages_say_what_broke_and_are_bounded():
    assert classify_error(ValueError("bad")).message == "ValueError: bad"
    assert len(classify_error(ValueError("x" * 5000)).message) == MAX_ERROR_MESSAGE


def test_a_refusal_from_storage_is_not_retried():
    store = FakeStore(ClientError({"Error": {"Code": "AccessDenied", "Message": "no"},
                                   "ResponseMetadata": {"HTTPStatusCode": 403}}, "PutObject"))  # fmt: skip
    waits: list[float] = []
    with pytest.raises(ClientError):
        PatientStore(store, deadline=100.0, clock=lambda: 0.0, sleep=waits.append).put("k", b"", "image/png")
    assert waits == []


def test_a_job_of_a_few_fast_steps_writes_only_its_last_step_of_progress():
    # The first progress write waits an interval like the others: a 4-step job well within 60 s
    # costs one progress round trip, and the last step is always written.
    state = WarmState(
        {"m": FakePipeline()}, FakeStore(), FakeRecords(), FakeCancels(), progress_interval_s=60
    )
    run_job(JobContext(state), spec(steps=4))
    assert [write for write in state.records.of("job-1") if write[0] == "progress"] == [("progress", 4)]


def test_the_worker_png_compress_level_reaches_the_stored_files():
    sizes = {}
    for level in (0, 9):
        state = WarmState(
            {"m": FakePipeline()}, FakeStore(), FakeRecords(), FakeCancels(), png_compress_level=level
        )
        run_job(JobContext(state), spec(width=64, height=64))
        data = state.store.objects["job-1/0.png"]
        assert Image.open(io.BytesIO(data)).convert("RGB").getpixel((5, 5)) == (255, 0, 0)
        sizes[level] = len(data)
    assert sizes[0] > sizes[9] + 64 * 64  # stored (level 0) against deflated: the level was used
