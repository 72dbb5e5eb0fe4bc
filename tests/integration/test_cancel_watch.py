"""The worker's cancel watch: announced cancels reach the watched job at once; lost ones by polling."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from latentq.keys import cancel_key
from latentq.records import JobRecords
from worker.cancel_watch import CancelWatch


@pytest.fixture
def watch(redis) -> Iterator[CancelWatch]:
    started = CancelWatch(JobRecords(redis, retention_s=60), poll_s=0.2).start()
    yield started
    started.stop()


def test_an_announced_cancel_sets_only_its_own_jobs_event(redis, watch):
    records = JobRecords(redis, retention_s=60)
    mine, other = str(uuid.uuid4()), str(uuid.uuid4())
    with watch.watching(mine) as cancel, watch.watching(other) as other_cancel:
        records.request_cancel(mine)
        assert cancel.wait(0.15)  # within one poll interval: the announcement, not the poll
        assert not other_cancel.is_set()


def test_a_cancel_whose_announcement_was_lost_is_found_by_polling(redis, watch):
    job_id = str(uuid.uuid4())
    with watch.watching(job_id) as cancel:
        redis.set(cancel_key(job_id), 1, ex=60)  # the flag without its announcement
        assert not cancel.wait(0.05)
        assert cancel.wait(2)


def test_jobs_no_longer_watched_are_left_alone(redis, watch):
    job_id = str(uuid.uuid4())
    with watch.watching(job_id) as cancel:
        pass
    JobRecords(redis, retention_s=60).request_cancel(job_id)
    assert not cancel.wait(0.5)
