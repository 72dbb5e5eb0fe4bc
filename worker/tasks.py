"""Compatibility alias (remove in 0.4): generation jobs are queued under ``worker.tasks.generate``
(``latentq.contract.GENERATE_FUNCTION``), 0.1's path, so 0.1 workers run them during an upgrade;
RQ resolves it here to ``worker.job_functions.generate``."""

from worker.job_functions import generate

__all__ = ["generate"]
