"""What a job runs with, passed to it explicitly: the worker's warm state and the job's seat in
its sampling round, behind small protocols so the runner can be tested with fakes.

The worker hands each job thread a ``JobContext`` (``use_context``, a context variable set per
job thread) and the RQ function passes it on to ``worker.runner.run_job``; nothing is read from
module globals or thread-locals.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from PIL.Image import Image

from latentq.contract import JobError, JobSpec, JobStatus, StoredImage
from worker.safety import review_call

#: Called after each denoising step with (step, total steps, latents); returning True stops the job.
OnStep = Callable[[int, int, Any], bool]


class ImagePipeline(Protocol):
    """What the job loop needs of a pipeline."""

    def generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None = None) -> list[Image]:
        """Return the images for ``spec``, given its input images by name (``init``, ``mask``);
        ``on_step(step, total, latents)`` is called after each denoising step; True stops the job."""
        ...


class ObjectStore(Protocol):
    """What the job loop needs of storage."""

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``."""
        ...

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        ...

    def delete(self, keys: list[str]) -> None:
        """Delete the objects under ``keys`` (missing ones are no error)."""
        ...


class JobLog(Protocol):
    """What the job loop writes to the job records (``latentq.records.JobRecords``). ``run`` is the
    token of the job's run (``mark_running``): a write in another run's name is refused."""

    def cancel_requested(self, *job_ids: str) -> list[str]:
        """Return those of ``job_ids`` whose cancel was requested."""
        ...

    def status(self, job_id: str) -> JobStatus | None:
        """Return the job's stored status."""
        ...

    def mark_running(self, spec: JobSpec, run: str = "") -> bool:
        """Record that the job started as run ``run``; False: it may not run."""
        ...

    def progress(
        self,
        job_id: str,
        step: int,
        total_steps: int,
        publish: bool,
        eta_s: float = 0.0,
        notify: bool = False,
        run: str | None = None,
    ) -> None:
        """Note a denoising step."""
        ...

    def preview(self, job_id: str, step: int, jpeg: bytes, run: str | None = None) -> None:
        """Keep and publish a preview."""
        ...

    def mark_canceled(self, spec: JobSpec, run: str | None = None) -> bool:
        """Record that the job was canceled; False: it had ended."""
        ...

    def mark_failed(self, spec: JobSpec, error: JobError, run: str | None = None) -> bool:
        """Record that the job failed; False: it had ended."""
        ...

    def mark_succeeded(
        self,
        spec: JobSpec,
        images: list[StoredImage],
        timings: dict[str, float],
        batch_size: int = 1,
        run: str | None = None,
    ) -> bool:
        """Record that the job succeeded; False: it had ended, or moved to another run, meanwhile."""
        ...


class CancelSource(Protocol):
    """Tells a running job that its cancel was requested (``worker.cancel_watch.CancelWatch``)."""

    def watching(self, job_id: str) -> AbstractContextManager[threading.Event]:
        """Watch ``job_id`` for a ``with`` block; yield the event its cancel request sets."""
        ...


class Sampled(NamedTuple):
    """A job's sampling outcome."""

    images: list[Image]
    #: Jobs in the pipeline call that sampled it, itself included.
    batch_size: int = 1
    #: Per image, whether the model's safety checker flagged it (``worker.safety``); None: not checked.
    nsfw: list[bool] | None = None


class Sampler(Protocol):
    """Where a job's sampling runs: its seat in a round (``worker.rounds.RoundSeat``)."""

    def sample(
        self, pipeline: Any, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None
    ) -> Sampled:
        """Return the job's images (checked, if its model's are), and its pipeline call's size."""
        ...


class SampleAlone:
    """Samples a job by itself, on the calling thread (a job outside any round)."""

    def sample(
        self, pipeline: Any, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None
    ) -> Sampled:
        """Return the job's images from its own pipeline call, checked if its model's are."""
        [(images, nsfw)] = review_call(pipeline, [pipeline.generate(spec, inputs, on_step)])
        return Sampled(images, 1, nsfw)


@dataclass(frozen=True)
class WarmState:
    """What outlives each job: the warm pipelines by model id, storage, job records, the cancel
    watch, and how often to report progress."""

    pipelines: Mapping[str, ImagePipeline]
    store: ObjectStore
    records: JobLog
    cancels: CancelSource
    #: Seconds between progress writes while sampling (a cancel is seen at the next step).
    progress_interval_s: float = 0.25
    #: Seconds between two progress webhooks of a job that asked for them.
    webhook_progress_interval_s: float = 2.0
    #: Marks each image as it is stored (``worker.watermark``); None: images are stored as made.
    watermark: Callable[[Image], Image] | None = None
    #: zlib level of the PNG files written (0-9: see ``LATENTQ_PNG_COMPRESS_LEVEL``).
    png_compress_level: int = 1


@dataclass(frozen=True)
class JobContext:
    """What one job runs with: the warm state and where its sampling runs."""

    warm: WarmState
    sampler: Sampler = field(default_factory=SampleAlone)
    #: When the job's time limit runs out (``time.monotonic`` seconds): storage calls that fail are
    #: retried until then.
    deadline: float = math.inf
    #: When the job was submitted (epoch seconds; None: unknown), for its end-to-end time.
    submitted_at: float | None = None


_current: ContextVar[JobContext] = ContextVar("latentq_job_context")


@contextmanager
def use_context(context: JobContext) -> Iterator[JobContext]:
    """Hand ``context`` to the job the calling thread runs in the ``with`` block."""
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_context() -> JobContext:
    """Return the context the worker handed the calling job thread; fail clearly outside one."""
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("no job context: run generation jobs with 'python -m worker'") from None
