"""How a job record is reconciled with RQ's status of its job (``latentq.transitions``)."""

from __future__ import annotations

from latentq.contract import JobStatus
from latentq.transitions import has_ended, reconcile


def test_a_running_job_rq_ended_without_its_outcome_lost_its_worker():
    status, error = reconcile(JobStatus.RUNNING, "finished")
    assert status is JobStatus.FAILED and error is not None and error.name == "worker_lost"
    assert has_ended("running", "failed")


def test_a_queued_job_stays_queued_whatever_a_stale_run_left_in_rq():
    # Requeued by the reaper, or its claim lost in a Redis failover: it runs again.
    assert reconcile(JobStatus.QUEUED, "finished") == (JobStatus.QUEUED, None)
    assert not has_ended("queued", "finished")


def test_a_terminal_record_is_final():
    assert reconcile(JobStatus.SUCCEEDED, "failed") == (JobStatus.SUCCEEDED, None)
    assert has_ended("succeeded", None) and has_ended(None, None)
