"""Rounds without services: grouping, chunking, leaving, a failed batch falling back to one by one,
out-of-memory halving and accelerator faults."""

from __future__ import annotations

import threading

import pytest
import torch

from latentq.contract import JobSpec, WeightedPrompt
from worker.rounds import DeviceFault, SamplingRound, _chunks, batch_key, is_device_fault


def spec(name: str, samples: int = 1, **changes) -> JobSpec:
    values = dict(job_id=name, model="m", prompts=[WeightedPrompt(text=name, weight=1.0)], width=64,
                  height=64, steps=20, cfg_scale=7.0, samples=samples, seed=1, sampler="K_EULER")  # fmt: skip
    return JobSpec(**{**values, **changes})


class FakePipeline:
    """Records calls; a spec named in ``broken`` fails whenever it is sampled."""

    def __init__(
        self, broken: tuple[str, ...] = (), fits: int = 99, fault: BaseException | None = None
    ) -> None:
        self.calls: list[list[str]] = []
        self.broken = broken
        #: Images that fit in one call: more raise torch's out-of-memory error, as CUDA's would.
        self.fits = fits
        #: Raised by every call, when set (an accelerator fault).
        self.fault = fault

    def _check(self, specs) -> None:
        if self.fault is not None:
            raise self.fault
        if sum(spec.samples for spec in specs) > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    def generate(self, spec, inputs, on_step=None):
        self.calls.append([spec.job_id])
        self._check([spec])
        if spec.job_id in self.broken:
            raise ValueError(f"{spec.job_id} is broken")
        return [f"{spec.job_id}:{index}" for index in range(spec.samples)]

    def generate_batch(self, members):
        self.calls.append([spec.job_id for spec, _ in members])
        self._check([spec for spec, _ in members])
        if any(spec.job_id in self.broken for spec, _ in members):
            raise ValueError("the batch failed")
        return [[f"{spec.job_id}:{index}" for index in range(spec.samples)] for spec, _ in members]


def run_round(
    pipeline: FakePipeline, specs: list[JobSpec | None], max_images: int = 8, raised=None, flags: bool = False
) -> dict:
    """Run a round of job threads (None: a job that leaves before sampling); return each outcome,
    (images, batch size), and their safety flags if ``flags`` (a job still waiting when the round
    ended has none). What the round raised goes in ``raised``."""
    round_ = SamplingRound(len(specs))
    outcomes: dict = {}

    def job(index: int, job_spec: JobSpec | None) -> None:
        seat = round_.seat()
        try:
            if job_spec is not None:
                sampled = seat.sample(pipeline, job_spec, {}, None)
                outcomes[index] = tuple(sampled) if flags else tuple(sampled[:2])
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcomes[index] = error
        finally:
            seat.leave()

    threads = [threading.Thread(target=job, args=item) for item in enumerate(specs)]
    for thread in threads:
        thread.daemon = True
        thread.start()
    try:
        round_.run(max_images)
    except Exception as error:  # noqa: BLE001 - the outcome under test
        raised.append(error)
    for thread in threads:
        thread.join(0.5 if raised else 10)
    return outcomes


def test_compatible_jobs_share_one_call_and_others_run_alone():
    pipeline = FakePipeline()
    outcomes = run_round(pipeline, [spec("a"), spec("b", width=128), None, spec("c", samples=2)])
    assert sorted(map(sorted, pipeline.calls)) == [["a", "c"], ["b"]]
    assert outcomes[0] == (["a:0"], 2) and outcomes[3] == (["c:0", "c:1"], 2) and outcomes[1] == (["b:0"], 1)
    assert 2 not in outcomes  # the job that left was not waited for


def test_a_failed_batch_runs_its_members_alone_and_only_the_broken_one_fails():
    pipeline = FakePipeline(broken=("b",))
    outcomes = run_round(pipeline, [spec("a"), spec("b"), spec("c")])
    assert pipeline.calls[0] == ["a", "b", "c"] and sorted(pipeline.calls[1:]) == [["a"], ["b"], ["c"]]
    assert outcomes[0] == (["a:0"], 1) and outcomes[2] == (["c:0"], 1)
    assert isinstance(outcomes[1], ValueError)


def test_a_batch_out_of_memory_is_halved_down_to_one_job_and_only_what_cannot_fit_fails():
    pipeline = FakePipeline(fits=2)
    outcomes = run_round(
        pipeline, [spec("a"), spec("b"), spec("c"), spec("d"), spec("e"), spec("f", samples=3)]
    )
    # 8 images: halved to 3 jobs (5 images), then 2 + 1; "f" alone still makes 3 images: out of memory.
    assert pipeline.calls[:3] == [["a", "b", "c", "d", "e", "f"], ["a", "b", "c"], ["a", "b"]]
    assert sorted(map(sorted, pipeline.calls[3:])) == [["c"], ["d", "e"], ["d", "e", "f"], ["f"]]
    assert [outcomes[index] for index in range(5)] == [
        (["a:0"], 2), (["b:0"], 2), (["c:0"], 1), (["d:0"], 2), (["e:0"], 2)
    ]  # fmt: skip
    assert isinstance(outcomes[5], torch.OutOfMemoryError)


def test_an_accelerator_fault_stops_the_round_without_failing_any_job():
    pipeline = FakePipeline(
        fault=torch.AcceleratorError("CUDA error: an illegal memory access was encountered")
    )
    raised: list = []
    outcomes = run_round(pipeline, [spec("a"), spec("b")], raised=raised)
    assert len(raised) == 1 and isinstance(raised[0], DeviceFault)
    assert outcomes == {}  # no job was finished: the worker gives them back (and exits)
    assert pipeline.calls == [["a", "b"]]  # not retried one by one on a broken device


@pytest.mark.parametrize(
    ("error", "fault"),
    [(RuntimeError("CUDA error: device-side assert triggered"), True), (ValueError("CUDA error"), False),
     (torch.OutOfMemoryError("CUDA out of memory"), False), (RuntimeError("shape mismatch"), False)],
)  # fmt: skip
def test_is_device_fault(error, fault):
    assert is_device_fault(error) is fault


def test_chunks_respect_the_image_limit_and_a_large_job_runs_alone():
    requests = [type("R", (), {"spec": spec(name, samples)})() for name, samples in
                [("a", 3), ("b", 3), ("c", 3), ("d", 10), ("e", 1)]]  # fmt: skip
    chunks = _chunks(requests, 8)
    assert [[r.spec.job_id for r in chunk] for chunk in chunks] == [["a", "b"], ["c"], ["d"], ["e"]]


@pytest.mark.parametrize(
    ("changes", "batched"),
    [({}, True), ({"prompts": [WeightedPrompt(text="other", weight=2.0)], "seed": 9, "samples": 3}, True),
     ({"output_format": "webp", "preview": True}, True), ({"cfg_scale": 5.0}, False), ({"steps": 21}, False),
     ({"sampler": "DDIM"}, False), ({"height": 128}, False), ({"task": "image-to-image"}, False)],
)  # fmt: skip
def test_batch_key(changes, batched):
    assert (batch_key(spec("x")) == batch_key(spec("y", **changes))) is batched
    assert batch_key(spec("x", task="upscale")) is None
