"""Long waits are capped per account and per API process, and block on connections of their own:
one account's open event streams neither exhaust another's share nor the connections submits use."""

from __future__ import annotations

import time
from contextlib import ExitStack

import httpx

from tests.conftest import api_settings, serve

#: A model no worker serves: its jobs stay queued, so their streams stay open.
LIMITS = {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576}
IDLE_MODEL = {"id": "never-served", "source": "/nowhere", "family": "sd1", "limits": LIMITS}
BODY = {"model": "never-served", "prompt": "a", "width": 64, "height": 64, "steps": 1}


def open_stream(client: httpx.Client, stack: ExitStack) -> httpx.Response:
    submitted = client.post("/v1/generate", json=BODY)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    return stack.enter_context(client.stream("GET", f"/v1/jobs/{job_id}/events"))


def test_streams_are_capped_per_account_and_in_all_and_submits_go_on(redis_server, s3_server):
    settings = api_settings(
        redis_server, s3_server, models=[IDLE_MODEL], max_streams=5, max_streams_per_account=3,
        async_redis_connections=10,
    )  # fmt: skip
    with serve(settings) as url, ExitStack() as stack:
        a, b = (
            stack.enter_context(
                httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)
            )
            for key in ("test-key-1", "test-key-2")
        )
        assert [open_stream(a, stack).status_code for _ in range(3)] == [200] * 3
        over = open_stream(a, stack)
        assert over.status_code == 429 and over.headers["retry-after"] == "5"
        over.read()
        assert over.json()["error"]["name"] == "too_many_streams"
        # A's waits are full: its Prefer: wait submit is accepted all the same, answered at once.
        waited = a.post("/v1/generate", json=BODY, headers={"Prefer": "wait=30"})
        assert waited.status_code == 202 and waited.json()["status"] == "queued"
        assert [open_stream(b, stack).status_code for _ in range(2)] == [200] * 2
        busy = open_stream(b, stack)
        assert busy.status_code == 503
        busy.read()
        assert busy.json()["error"]["name"] == "service_busy"
        # Five streams block on their own pool: B's submits still get connections, many times over.
        assert {b.post("/v1/generate", json=BODY).status_code for _ in range(30)} == {202}


def test_a_stream_gives_its_slot_back_when_its_client_leaves(redis_server, s3_server):
    settings = api_settings(redis_server, s3_server, models=[IDLE_MODEL], max_streams_per_account=1)
    with (
        serve(settings) as url,
        httpx.Client(base_url=url, headers={"Authorization": "Bearer test-key-1"}, timeout=30) as client,
    ):
        with ExitStack() as stack:
            assert open_stream(client, stack).status_code == 200
        # The stream's client left: its slot comes back (at the stream's next keep-alive, 2 s at most).
        deadline = time.monotonic() + 15
        while True:
            with ExitStack() as stack:
                if open_stream(client, stack).status_code == 200:
                    break
            assert time.monotonic() < deadline, "the slot was never given back"
            time.sleep(0.5)
