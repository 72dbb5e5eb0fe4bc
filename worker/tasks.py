"""Deprecated alias, kept for one release (remove in 0.3): jobs queued before 0.2 name
``worker.tasks.generate``; RQ resolves that path here. New ones name
``worker.job_functions.generate`` (``latentq.contract.GENERATE_FUNCTION``)."""

from worker.job_functions import generate

__all__ = ["generate"]
