"""Sampling rounds: the jobs of one round sample together, each still a job of its own.

The worker takes a round of jobs: the one RQ handed it and the queued jobs with the same
``batch_key``, up to ``LATENTQ_MAX_BATCH`` images. Each job runs in its own thread through RQ's
usual ``perform_job`` (its record, events, cancel, timeout, failure and result are its own) until
it needs sampling; there its ``RoundSeat`` (in its ``JobContext``) hands a ``SampleRequest`` to the
``SamplingRound`` and waits. The worker's
main thread samples the round: requests that share a ``batch_key`` go through one pipeline call
(``WarmPipeline.generate_batch``), chunked to the image and memory limits; any other runs alone.
If a batched call fails, its members are run again one by one, so one job never fails another;
if it ran out of accelerator memory, the cache is freed and it is tried again at half its size,
down to one job (whose own out-of-memory fails it ``out_of_memory``). An accelerator fault that
leaves the device unsound (``DeviceFault``) stops the round without failing any job: the worker
gives its jobs back and exits for its orchestrator to restart it.
Then each job's thread encodes and uploads its images while the main thread takes the next
round: sampling does not wait on storage.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from PIL.Image import Image

from latentq.contract import JobSpec
from worker.context import OnStep, Sampled
from worker.metrics import BATCH_SIZE, SAMPLING_SECONDS
from worker.safety import review_call

log = logging.getLogger("latentq.worker")

#: Seconds a job thread waits between looks at its request: the timeout exception RQ raises in it
#: (``TimerDeathPenalty``) arrives between them.
WAIT_SLICE_S = 0.25

T = TypeVar("T")


class DeviceFault(Exception):
    """The accelerator failed in a way that leaves it unsound (a CUDA error other than out of memory):
    nothing more can run on it in this process."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says the host or the accelerator ran out of memory."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError"


def is_device_fault(error: BaseException) -> bool:
    """Whether ``error`` is an accelerator fault other than out of memory: torch's
    ``AcceleratorError``, or a ``RuntimeError`` CUDA reports as ``CUDA error: ...``."""
    if is_out_of_memory(error):
        return False
    return type(error).__name__ == "AcceleratorError" or (
        isinstance(error, RuntimeError) and "CUDA error" in str(error)
    )


def free_accelerator_memory() -> None:
    """Hand the CUDA cache back after an out-of-memory (nothing to do without CUDA)."""
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def batch_key(spec: JobSpec) -> tuple | None:
    """Return what jobs must share to sample in one pipeline call, or None if ``spec`` runs alone.

    Per-job prompts and seeds differ freely; guidance is one number per pipeline call here, and so
    is the set of LoRA adapters with their weights. A job with a ControlNet runs alone: its
    control image is its own.
    """
    if spec.task != "text-to-image" or spec.control_model is not None:
        return None
    loras = tuple((lora.id, lora.weight) for lora in spec.loras)
    return (spec.model, spec.width, spec.height, spec.steps, spec.sampler, spec.cfg_scale, loras)


@dataclass
class SampleRequest:
    """One job's sampling, handed from its thread to the round."""

    pipeline: Any
    spec: JobSpec
    inputs: dict[str, Image]
    on_step: OnStep | None
    images: list[Image] | None = None
    error: BaseException | None = None
    #: Jobs sampled in the same pipeline call, this one included.
    batch_size: int = 1
    #: Per image, whether the model's safety checker flagged it; None: not checked.
    nsfw: list[bool] | None = None
    #: Set once the job no longer waits (it stopped, timed out or failed): its slot is wasted work.
    abandoned: bool = False
    done: threading.Event = field(default_factory=threading.Event)

    def step(self, step: int, total: int, latents: Any) -> bool:
        """Report a step to the job; a job that asks to stop is released at once."""
        if self.abandoned:
            return True
        if self.on_step is not None and self.on_step(step, total, latents):
            self.finish([])
            return True
        return False

    def finish(
        self,
        images: list[Image] | None = None,
        error: BaseException | None = None,
        nsfw: list[bool] | None = None,
    ) -> None:
        """Hand the job its images (or error) and their safety flags, once."""
        if not self.done.is_set():
            self.images, self.error, self.nsfw = images, error, nsfw
            self.done.set()


class SamplingRound:
    """The jobs a worker runs together: ``expected`` job threads, each of which samples through its
    ``RoundSeat`` or leaves without sampling."""

    def __init__(self, expected: int = 0) -> None:
        self.expected = expected
        #: When sampling began and ended (``time.monotonic`` seconds).
        self.started = self.ended = 0.0
        self.requests: list[SampleRequest] = []
        self.left = 0
        self._changed = threading.Condition()

    def seat(self) -> RoundSeat:
        """Return a seat for one more job thread (the caller counts it in ``expected``)."""
        return RoundSeat(self)

    # -- job threads, through their seats ----------------------------------------------------
    def add_request(self, request: SampleRequest) -> None:
        """Take a job thread's sampling request."""
        with self._changed:
            self.requests.append(request)
            self._changed.notify_all()

    def note_left(self) -> None:
        """Note that a job thread left without sampling."""
        with self._changed:
            self.left += 1
            self._changed.notify_all()

    # -- the worker's main thread ------------------------------------------------------------
    def wait_for_requests(self) -> list[SampleRequest]:
        """Wait until every job thread has asked to sample or left; return the requests."""
        with self._changed:
            self._changed.wait_for(lambda: len(self.requests) + self.left >= self.expected)
            return list(self.requests)

    def run(self, max_images: int) -> None:
        """Sample every request of the round: compatible ones batched, up to ``max_images`` a call
        and no more than the pipeline's ``batch_limit`` (what fits in free GPU memory)."""
        requests = self.wait_for_requests()
        self.started = time.monotonic()
        device_fault = False
        groups: dict[Any, list[SampleRequest]] = {}
        for index, request in enumerate(requests):
            key = batch_key(request.spec)
            groups.setdefault((id(request.pipeline), key) if key else index, []).append(request)
        try:
            for members in groups.values():
                limit = getattr(members[0].pipeline, "batch_limit", lambda _spec: None)(members[0].spec)
                for chunk in _chunks(members, min(max_images, limit or max_images)):
                    run_chunk(chunk)
        except DeviceFault:
            device_fault = True  # the jobs fail nothing: the worker gives them back and exits
            raise
        finally:  # else no job thread may wait forever, whatever went wrong here
            self.ended = time.monotonic()
            for request in requests if not device_fault else ():
                request.finish(error=RuntimeError("the worker stopped before sampling this job"))


def _chunks(members: list[SampleRequest], max_images: int) -> list[list[SampleRequest]]:
    """Split ``members`` into runs of at most ``max_images`` images (a larger job runs alone)."""
    chunks: list[list[SampleRequest]] = [[]]
    images = 0
    for member in members:
        if chunks[-1] and images + member.spec.samples > max_images:
            chunks.append([])
            images = 0
        chunks[-1].append(member)
        images += member.spec.samples
    return [chunk for chunk in chunks if chunk]


def run_chunk(chunk: list[SampleRequest]) -> None:
    """Sample ``chunk`` in one call (or alone, for one member), its images checked by the model's
    safety checker in one call after it. A batch that runs out of memory is tried again in halves,
    down to single jobs; one that fails otherwise (its check included) runs each member alone.
    Raises ``DeviceFault`` when the accelerator fails (no member is finished then)."""
    live = [request for request in chunk if not request.abandoned]
    if len(live) > 1:
        try:
            jobs = [(request.spec, request.step) for request in live]
            results = review_call(
                live[0].pipeline, _counted(live, partial(live[0].pipeline.generate_batch, jobs))
            )
        except Exception as error:
            if is_device_fault(error):
                raise DeviceFault(str(error)) from error
            if is_out_of_memory(error):
                free_accelerator_memory()
                half = (len(live) + 1) // 2
                log.warning("a batch of %d jobs ran out of memory; trying %d and %d", len(live), half,
                            len(live) - half)  # fmt: skip
                run_chunk(live[:half])
                run_chunk(live[half:])
                return
            log.warning("a batch of %d jobs failed (%s); running them one by one", len(live), error)
        else:
            for request, (images, nsfw) in zip(live, results, strict=True):
                request.batch_size = len(live)
                request.finish(images, nsfw=nsfw)
            images = sum(request.spec.samples for request in live)
            log.info("sampled %d jobs (%d images) in one batch", len(live), images,
                     extra={"batch_size": len(live), "images": images})  # fmt: skip
            return
    for request in live:
        try:
            call = partial(request.pipeline.generate, request.spec, request.inputs, request.step)
            [(images, nsfw)] = review_call(request.pipeline, [_counted([request], call)])
            request.finish(images, nsfw=nsfw)
        except BaseException as error:
            if is_device_fault(error):
                raise DeviceFault(str(error)) from error
            if is_out_of_memory(error):
                free_accelerator_memory()
            request.finish(error=error)


def _counted(members: list[SampleRequest], call: Callable[[], T]) -> T:
    """Make the pipeline call ``call`` that samples ``members``; count its time (the worker's busy
    time) and its batch size in the worker's metrics."""
    started = time.perf_counter()
    try:
        return call()
    finally:
        model = members[0].spec.model  # a model this worker serves: its pipeline is warm here
        SAMPLING_SECONDS.labels(model).inc(time.perf_counter() - started)
        BATCH_SIZE.labels(model).observe(len(members))


class RoundSeat:
    """One job thread's place in a round: it samples through ``sample`` once, or ``leave``s."""

    def __init__(self, round_: SamplingRound) -> None:
        self.round = round_
        self.sampled = False

    def sample(
        self, pipeline: Any, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None
    ) -> Sampled:
        """Sample ``spec`` with the round (called by the job's thread); return its images, checked if
        its model's are, and the number of jobs in its pipeline call."""
        request = SampleRequest(pipeline, spec, inputs, on_step)
        self.sampled = True
        self.round.add_request(request)
        try:
            while not request.done.wait(WAIT_SLICE_S):
                pass
        finally:
            request.abandoned = True
        if request.error is not None:
            raise request.error
        return Sampled(request.images or [], request.batch_size, request.nsfw)

    def leave(self) -> None:
        """Note that the job thread is done; if it never sampled, the round stops waiting for it."""
        if not self.sampled:
            self.round.note_left()
