"""RQ entry points. The API enqueues them by dotted path (``latentq.contract.GENERATE_TASK``)."""

from __future__ import annotations

from typing import Any

from latentq.contract import JobSpec
from worker.runner import run_job
from worker.runtime import get_runtime


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one text-to-image job on the warm pipeline; return its images as RQ's result."""
    stored = run_job(get_runtime(), JobSpec.model_validate(spec))
    return {"images": [image.model_dump() for image in stored]}
