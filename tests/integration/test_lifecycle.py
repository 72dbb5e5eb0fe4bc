"""Following and stopping jobs: progress, the event stream (SSE), cancel."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from rq.job import Job

from latentq.keys import job_key
from tests.conftest import API_KEY, BUCKET, api_settings, object_folder, serve, wait_for_job

AUTH = {"Authorization": f"Bearer {API_KEY}"}
BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 20, "seed": 8}
# A registered model no worker serves: its jobs wait in the queue for as long as a test needs.
IDLE = {
    "id": "idle-sd",
    "source": "/nowhere",
    "family": "sd1",
    "limits": {"min_side": 64, "min_pixels": 4096},
}


def read_events(response: httpx.Response) -> list[tuple[str, str, dict]]:
    """Parse a finished SSE response into (id, event, data) triples."""
    events, fields = [], {}
    for line in response.text.splitlines():
        if not line:
            if "event" in fields:
                events.append((fields["id"], fields["event"], json.loads(fields["data"])))
            fields = {}
        elif not line.startswith(":"):
            name, _, value = line.partition(": ")
            fields[name] = value
    return events


def test_finished_job_reports_its_progress(client, worker):
    job = wait_for_job(client, client.post("/v1/generate", json=BODY).json()["id"])
    assert job["progress"] == {"step": 20, "total_steps": 20, "fraction": 1.0}


def test_event_stream_tells_the_whole_story_and_resumes_after_last_event_id(client, worker):
    job_id = client.post("/v1/generate", json=BODY).json()["id"]
    response = client.get(f"/v1/jobs/{job_id}/events", timeout=60)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = read_events(response)
    names = [name for _, name, _ in events]
    assert names[:2] == ["queued", "started"] and names[-1] == "succeeded"
    steps = [data["step"] for _, name, data in events if name == "progress"]
    assert steps == list(range(1, 21))  # the test worker publishes every step
    final = events[-1][2]
    assert final["id"] == job_id and final["status"] == "succeeded" and final["images"][0]["url"]
    # Reconnecting after the "started" event replays everything after it, and only that.
    started_id = events[1][0]
    resumed = read_events(client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": started_id}))
    assert resumed == [*events[2:-1], resumed[-1]] and resumed[-1][1] == "succeeded"


def test_events_of_an_unknown_job_are_404(client):
    assert client.get("/v1/jobs/0b4f3c1e-0000-4000-8000-000000000000/events").status_code == 404


def test_running_job_stops_within_two_steps_of_cancel_and_the_worker_serves_on(client, worker):
    job_id = client.post("/v1/generate", json={**BODY, "steps": 150, "width": 128, "height": 128}).json()[
        "id"
    ]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/v1/jobs/{job_id}").json())["progress"] is None or job["progress"]["step"] < 5:
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.01)
    canceled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"  # at once, for good
    step_at_cancel = canceled.json()["progress"]["step"]
    final = wait_for_job(client, job_id)
    assert final["status"] == "canceled" and final["images"] == [] and final["error"] is None
    assert final["progress"]["step"] - step_at_cancel <= 2, (step_at_cancel, final["progress"])
    assert wait_for_job(client, client.post("/v1/generate", json=BODY).json()["id"])["status"] == "succeeded"


def test_finished_job_cannot_be_canceled(client, worker):
    job = wait_for_job(client, client.post("/v1/generate", json=BODY).json()["id"])
    for method in ("POST", "DELETE"):
        path = f"/v1/jobs/{job['id']}/cancel" if method == "POST" else f"/v1/jobs/{job['id']}"
        response = client.request(method, path)
        assert response.status_code == 409
        assert response.json()["error"]["name"] == "job_finished"
    after = client.get(f"/v1/jobs/{job['id']}").json()
    unsigned = lambda j: {**j, "images": [{**image, "url": None} for image in j["images"]]}  # noqa: E731
    assert unsigned(after) == unsigned(job)  # unchanged but for freshly signed URLs


@pytest.fixture(scope="module")
def idle_api(redis_server, s3_server):
    # One key follows a job from 200 streams: above the default share of one account (100).
    settings = api_settings(
        redis_server, s3_server, models=[IDLE], default_model="idle-sd", max_streams_per_account=250
    )
    with serve(settings) as url:
        yield url


def test_queued_job_canceled_never_starts(idle_api, redis):
    with httpx.Client(base_url=idle_api, headers=AUTH) as client:
        job_id = client.post("/v1/generate", json=BODY).json()["id"]
        response = client.delete(f"/v1/jobs/{job_id}")
        assert response.status_code == 200 and response.json()["status"] == "canceled"
        assert Job.fetch(job_id, connection=redis).get_status() == "canceled"  # RQ agrees: out of the queue
        assert client.post(f"/v1/jobs/{job_id}/cancel").status_code == 409
        names = [name for _, name, _ in read_events(client.get(f"/v1/jobs/{job_id}/events"))]
    assert names == ["queued", "canceled"]


def test_canceling_a_job_queued_again_after_a_lost_run_deletes_what_that_run_stored(
    idle_api, redis, s3_server
):
    # A run stored its image, then could not record its success (Redis went away) and was lost;
    # the job waits for its re-run. Canceled now, that image would be no job's: it is deleted.
    with httpx.Client(base_url=idle_api, headers=AUTH) as client:
        job_id = client.post("/v1/generate", json=BODY).json()["id"]
        redis.hset(job_key(job_id), "attempt", 2)
        s3 = s3_server.client()
        folder = object_folder(client, job_id)
        s3.put_object(Bucket=BUCKET, Key=f"{folder}/0.png", Body=b"a lost run's image")
        assert client.post(f"/v1/jobs/{job_id}/cancel").json()["status"] == "canceled"
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{folder}/").get("KeyCount", 0) == 0


def test_two_hundred_event_streams_at_once(idle_api):
    async def scenario() -> list[list[str]]:
        limits = httpx.Limits(max_connections=250, max_keepalive_connections=250)
        async with httpx.AsyncClient(base_url=idle_api, headers=AUTH, limits=limits, timeout=60) as client:
            job_id = (await client.post("/v1/generate", json=BODY)).json()["id"]
            opened = asyncio.Event()
            count = 0

            async def listen() -> list[str]:
                nonlocal count
                names = []
                async with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
                    async for line in response.aiter_lines():
                        if line.startswith("event: "):
                            names.append(line.removeprefix("event: "))
                            if names == ["queued"]:
                                count += 1
                                if count == 200:
                                    opened.set()
                return names

            listeners = [asyncio.create_task(listen()) for _ in range(200)]
            await asyncio.wait_for(opened.wait(), 60)
            started = time.monotonic()
            assert (await client.get("/healthz")).status_code == 200
            assert time.monotonic() - started < 2  # the API stays responsive with 200 open streams
            assert (await client.post(f"/v1/jobs/{job_id}/cancel")).status_code == 200
            return await asyncio.wait_for(asyncio.gather(*listeners), 60)

    results = asyncio.run(scenario())
    assert len(results) == 200 and all(names == ["queued", "canceled"] for names in results)


def test_finished_job_reports_stage_timings(client, worker):
    job = wait_for_job(client, client.post("/v1/generate", json=BODY).json()["id"])
    assert set(job["timings"]) == {"queued_ms", "load_ms", "sampling_ms", "encode_ms", "upload_ms"}
    assert all(value >= 0 for value in job["timings"].values())
    assert job["timings"]["sampling_ms"] > job["timings"]["encode_ms"]
    assert job["eta_seconds"] is None and job["queue_position"] is None


def test_queued_jobs_report_their_position_and_running_ones_an_eta(idle_api, client, worker):
    with httpx.Client(base_url=idle_api, headers=AUTH) as idle:
        ids = [idle.post("/v1/generate", json=BODY).json()["id"] for _ in range(3)]
        positions = [idle.get(f"/v1/jobs/{job_id}").json()["queue_position"] for job_id in ids]
        assert positions == [positions[0], positions[0] + 1, positions[0] + 2]  # others may be ahead
        for job_id in ids:
            idle.delete(f"/v1/jobs/{job_id}")
    job_id = client.post("/v1/generate", json={**BODY, "steps": 150, "width": 128, "height": 128}).json()[
        "id"
    ]
    deadline = time.monotonic() + 60
    while (job := client.get(f"/v1/jobs/{job_id}").json())["progress"] is None or job["progress"]["step"] < 5:
        assert time.monotonic() < deadline, job
        time.sleep(0.01)
    assert job["status"] == "running" and job["eta_seconds"] > 0
    client.post(f"/v1/jobs/{job_id}/cancel")
    wait_for_job(client, job_id)


def test_previews_arrive_in_the_event_stream_and_at_preview_url(client, worker):
    import base64
    import io

    from PIL import Image

    body = {**BODY, "width": 128, "height": 96, "preview": True}
    job_id = client.post("/v1/generate", json=body).json()["id"]
    events = read_events(client.get(f"/v1/jobs/{job_id}/events", timeout=60))
    previews = [data for _, name, data in events if name == "preview"]
    assert [data["step"] for data in previews] == [5, 10, 15, 20]  # every 5 steps, and the last
    image = Image.open(io.BytesIO(base64.b64decode(previews[-1]["jpeg"])))
    assert (image.format, image.size) == ("JPEG", (16, 12))  # the latents' size: 1/8 of the image
    job = client.get(f"/v1/jobs/{job_id}").json()
    assert job["preview_url"] == f"/v1/jobs/{job_id}/preview"
    served = client.get(job["preview_url"])
    assert served.headers["content-type"] == "image/jpeg" and served.content == base64.b64decode(
        previews[-1]["jpeg"]
    )


def test_jobs_without_preview_have_none(client, worker):
    job = wait_for_job(client, client.post("/v1/generate", json=BODY).json()["id"])
    assert job["preview_url"] is None
    assert client.get(f"/v1/jobs/{job['id']}/preview").status_code == 404
