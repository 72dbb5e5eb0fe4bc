"""The worker process's warm state, set up once at start-up and used by every job."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from PIL.Image import Image

from latentq.contract import JobSpec
from latentq.jobs import JobRecords
from worker.cancels import CancelWatch


class ImagePipeline(Protocol):
    """What the job loop needs of a pipeline."""

    def generate(
        self, spec: JobSpec, inputs: dict[str, Image], on_step: Callable[[int, int, Any], bool] | None = None
    ) -> list[Image]:
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


@dataclass
class Runtime:
    """Everything a job needs that outlives it: the warm pipelines by model id, storage, job records,
    the cancel watch."""

    pipelines: dict[str, ImagePipeline]
    store: ObjectStore
    records: JobRecords
    cancels: CancelWatch
    #: Seconds between progress writes while sampling (a cancel is seen at the next step).
    progress_interval_s: float = 0.25
    #: Seconds between two progress webhooks of a job that asked for them.
    webhook_progress_interval_s: float = 2.0


_runtime: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Make ``runtime`` the process's warm state."""
    global _runtime
    _runtime = runtime


def get_runtime() -> Runtime:
    """Return the process's warm state; fail clearly if start-up did not install it."""
    if _runtime is None:
        raise RuntimeError("the worker runtime is not installed: start workers with 'python -m worker'")
    return _runtime
