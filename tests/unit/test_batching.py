"""Rounds without services: grouping, chunking, leaving, and a failed batch falling back to one by one."""

from __future__ import annotations

import threading

import pytest

from latentq.contract import JobSpec, WeightedPrompt
from worker.rounds import SamplingRound, _chunks, batch_key


def spec(name: str, samples: int = 1, **changes) -> JobSpec:
    values = dict(job_id=name, model="m", prompts=[WeightedPrompt(text=name, weight=1.0)], width=64,
                  height=64, steps=20, cfg_scale=7.0, samples=samples, seed=1, sampler="K_EULER")  # fmt: skip
    return JobSpec(**{**values, **changes})


class FakePipeline:
    """Records calls; a spec named in ``broken`` fails whenever it is sampled."""

    def __init__(self, broken: tuple[str, ...] = ()) -> None:
        self.calls: list[list[str]] = []
        self.broken = broken

    def generate(self, spec, inputs, on_step=None):
        self.calls.append([spec.job_id])
        if spec.job_id in self.broken:
            raise ValueError(f"{spec.job_id} is broken")
        return [f"{spec.job_id}:{index}" for index in range(spec.samples)]

    def generate_batch(self, members):
        self.calls.append([spec.job_id for spec, _ in members])
        if any(spec.job_id in self.broken for spec, _ in members):
            raise ValueError("the batch failed")
        return [[f"{spec.job_id}:{index}" for index in range(spec.samples)] for spec, _ in members]


def run_round(pipeline: FakePipeline, specs: list[JobSpec | None], max_images: int = 8) -> dict:
    """Run a round of job threads (None: a job that leaves before sampling); return each outcome."""
    round_ = SamplingRound(len(specs))
    outcomes: dict = {}

    def job(index: int, job_spec: JobSpec | None) -> None:
        seat = round_.seat()
        try:
            if job_spec is not None:
                outcomes[index] = seat.sample(pipeline, job_spec, {}, None)
        except Exception as error:  # noqa: BLE001 - the outcome under test
            outcomes[index] = error
        finally:
            seat.leave()

    threads = [threading.Thread(target=job, args=item) for item in enumerate(specs)]
    for thread in threads:
        thread.start()
    round_.run(max_images)
    for thread in threads:
        thread.join(10)
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
