"""The worker's heartbeat goes on while sampling blocks its main thread."""

from __future__ import annotations

import time

import pytest

from latentq.keys import rq_job_key
from tests.conftest import wait_for_job


@pytest.mark.slow
def test_job_heartbeat_advances_during_sampling(client, redis, worker):
    # About 5 s of sampling on 2 cores; the session worker beats every second.
    body = {"prompt": "a", "width": 512, "height": 512, "steps": 60}
    job_id = client.post("/v1/generate", json=body).json()["id"]
    beats: set[bytes] = set()
    deadline = time.monotonic() + 120
    while client.get(f"/v1/jobs/{job_id}").json()["status"] in ("queued", "running"):
        assert time.monotonic() < deadline
        beat = redis.hget(rq_job_key(job_id), "last_heartbeat")
        if beat is not None and client.get(f"/v1/jobs/{job_id}").json()["status"] == "running":
            beats.add(beat)
        time.sleep(0.2)
    assert wait_for_job(client, job_id)["status"] == "succeeded"
    # One beat is written when the job starts; more can only come from the heartbeat thread.
    assert len(beats) >= 3
