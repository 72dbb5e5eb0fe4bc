"""The RQ functions of generation jobs. The API queues them by dotted path
(``latentq.contract.GENERATE_FUNCTION``) and never imports the worker."""

from __future__ import annotations

from typing import Any

from latentq.contract import JobSpec
from worker.context import current_context
from worker.runner import run_job


def generate(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one generation job with the context its worker handed this thread; return its images
    as RQ's result."""
    stored = run_job(current_context(), JobSpec.model_validate(spec))
    return {"images": [image.model_dump() for image in stored]}
