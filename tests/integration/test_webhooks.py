"""Webhooks end to end: a real API, worker and dispatcher deliver signed job events to a real HTTP
receiver, verified with the reference ``standardwebhooks`` library."""

from __future__ import annotations

import itertools
import socket
import time
from collections.abc import Iterator

import httpx
import pytest
from redis import Redis
from rq import Queue

from latentq.keys import WEBHOOK_QUEUE
from tests.conftest import api_settings, serve, wait_for_job
from tests.integration.test_lifecycle import IDLE
from tests.integration.webhook_harness import api_client, delivery, secret, verified

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 10, "seed": 8}


@pytest.fixture
def client(hook_api) -> Iterator[httpx.Client]:
    with api_client(hook_api) as client:
        yield client


def test_completed_webhook_is_signed_and_verifies(client, worker, dispatcher, receiver):
    job = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/done")}).json()
    assert job["webhook"] is None or job["webhook"]["url"] == receiver.url("/done")
    [request] = receiver.wait("/done", 1)
    payload = verified(request, secret(client))
    assert payload["type"] == "job.completed" and payload["timestamp"].endswith("Z")
    data = payload["data"]
    assert data["id"] == job["id"] and data["status"] == "succeeded" and "webhook" not in data
    assert httpx.get(data["images"][0]["url"]).content.startswith(b"\x89PNG")
    headers = request["headers"]
    assert headers["webhook-id"] == f"msg_{job['id']}_completed"
    assert headers["Host"] == f"127.0.0.1:{receiver.port}"
    assert headers["Content-Type"] == "application/json"
    assert headers["User-Agent"].startswith("latentq-webhooks/")
    state = delivery(client, job["id"], "completed", "delivered")
    assert state["attempts"] == 1 and state["status_code"] == 200
    view = client.get(f"/v1/jobs/{job['id']}").json()
    assert view["webhook"]["url"] == receiver.url("/done") and view["webhook"]["events"] == ["completed"]
    assert "webhook" not in view["request"]
    # Another key's secret does not verify it.
    with api_client(client.base_url, "test-key-2") as other:
        assert secret(other) != secret(client)
        with pytest.raises(Exception, match="signature"):
            verified(request, secret(other))


def test_started_progress_and_completed_arrive_in_order_with_progress_throttled(
    client, worker, dispatcher, receiver
):
    body = {**BODY, "steps": 60, "width": 128, "height": 128}
    events = ["completed", "progress", "started"]  # any order
    job = client.post(
        "/v1/generate", json={**body, "webhook_url": receiver.url("/all"), "webhook_events": events}
    )
    job_id = job.json()["id"]
    assert job.json()["webhook"]["events"] == ["started", "progress", "completed"]
    wait_for_job(client, job_id)
    delivery(client, job_id, "completed", "delivered")
    payloads = [verified(request, secret(client)) for request in receiver.requests["/all"]]
    types = [payload["type"] for payload in payloads]
    assert types[0] == "job.started" and types[-1] == "job.completed", types
    assert payloads[0]["data"]["status"] == "running"
    progress = [payload for payload in payloads if payload["type"] == "job.progress"]
    assert progress, "a 60-step job sends progress webhooks (the test worker throttles them to 0.1 s)"
    steps = [payload["data"]["progress"]["step"] for payload in progress]
    assert len(steps) < 59 and steps == sorted(steps), steps
    ids = [request["headers"]["webhook-id"] for request in receiver.requests["/all"]]
    assert len(set(ids)) == len(ids) and ids[0] == f"msg_{job_id}_started"


def test_failed_delivery_is_retried_with_the_same_id_until_delivered(client, worker, dispatcher, receiver):
    receiver.scripts["/flaky"] = [500, 503, 200]
    job_id = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/flaky")}).json()["id"]
    requests = receiver.wait("/flaky", 3)
    assert len({request["headers"]["webhook-id"] for request in requests}) == 1
    for request in requests:
        assert verified(request, secret(client))["data"]["status"] == "succeeded"
    gaps = [later["at"] - earlier["at"] for earlier, later in itertools.pairwise(requests)]
    assert all(gap >= 0.9 for gap in gaps), gaps  # the schedule's 2 s waits, less RQ's rounding
    state = delivery(client, job_id, "completed", "delivered")
    assert state["attempts"] == 3 and state["status_code"] == 200


def test_delivery_gives_up_after_the_schedule_and_redirects_are_not_followed(
    client, worker, dispatcher, receiver
):
    receiver.scripts["/moved"] = [302]
    job_id = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/moved")}).json()["id"]
    retrying = delivery(client, job_id, "completed", "retrying")
    assert retrying["status_code"] == 302 and "redirect" in retrying["error"] and retrying["next_attempt_at"]
    state = delivery(client, job_id, "completed", "failed")
    assert state["attempts"] == 3 and len(receiver.requests["/moved"]) == 3
    assert receiver.requests["/redirected"] == []


def test_progress_is_not_retried(client, worker, dispatcher, receiver):
    receiver.scripts["/no-progress"] = [500]
    body = {**BODY, "steps": 60, "width": 128, "height": 128, "webhook_events": ["progress"]}
    job_id = client.post("/v1/generate", json={**body, "webhook_url": receiver.url("/no-progress")}).json()[
        "id"
    ]
    wait_for_job(client, job_id)
    time.sleep(3.5)  # past the first retry's time: nothing may come back
    ids = [request["headers"]["webhook-id"] for request in receiver.requests["/no-progress"]]
    assert ids and len(set(ids)) == len(ids), ids
    state = client.get(f"/v1/jobs/{job_id}").json()["webhook"]["deliveries"]["progress"]
    assert state["state"] in ("failed", "dropped") and state["attempts"] == 1


def test_gone_disables_the_url_until_reenabled(client, worker, dispatcher, receiver):
    receiver.scripts["/gone"] = [410]
    url = receiver.url("/gone")
    first = client.post("/v1/generate", json={**BODY, "webhook_url": url}).json()["id"]
    assert delivery(client, first, "completed", "disabled")["status_code"] == 410
    disabled = client.get("/v1/webhook").json()["disabled_urls"]
    assert [entry["url"] for entry in disabled] == [url]
    second = client.post("/v1/generate", json={**BODY, "webhook_url": url}).json()["id"]
    assert delivery(client, second, "completed", "disabled")["attempts"] == 1
    assert len(receiver.requests["/gone"]) == 1  # the second job's webhook was never sent
    # Another key's webhooks to the same URL are not affected.
    with api_client(client.base_url, "test-key-2") as other:
        assert other.get("/v1/webhook").json()["disabled_urls"] == []
    receiver.scripts["/gone"] = [200]
    assert client.delete("/v1/webhook/disabled").json()["disabled_urls"] == []
    third = client.post("/v1/generate", json={**BODY, "webhook_url": url}).json()["id"]
    delivery(client, third, "completed", "delivered")


def test_canceled_queued_job_sends_completed(client, dispatcher, receiver, redis_server, s3_server):
    settings = api_settings(
        redis_server, s3_server, webhook_allowed_hosts=("127.0.0.1",), models=(IDLE,)
    )  # fmt: skip
    with serve(settings) as url, api_client(url) as idle:
        body = {**BODY, "model": "idle-sd", "webhook_url": receiver.url("/canceled")}
        job_id = idle.post("/v1/generate", json=body).json()["id"]
        idle.post(f"/v1/jobs/{job_id}/cancel").raise_for_status()
        [request] = receiver.wait("/canceled", 1)
        assert verified(request, secret(idle))["data"]["status"] == "canceled"


def test_deliveries_wait_in_their_queue_while_no_dispatcher_runs(
    client, worker, dispatcher, receiver, redis_server
):
    dispatcher.stop()
    try:
        job_id = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/later")}).json()[
            "id"
        ]
        assert wait_for_job(client, job_id)["status"] == "succeeded"
        queue = Queue(WEBHOOK_QUEUE, connection=Redis.from_url(redis_server.url))
        assert queue.count == 1 and receiver.requests["/later"] == []
    finally:
        dispatcher.start()
    [request] = receiver.wait("/later", 1)
    assert verified(request, secret(client))["data"]["id"] == job_id


UNSAFE_URLS = [
    "ftp://127.0.0.1/hook",
    "http://user:pass@127.0.0.1/hook",
    "http:///hook",
    "http://10.0.0.8/hook",
    "http://192.168.1.20:8080/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://100.64.1.1/hook",
    "http://[::1]/hook",
    "http://[::ffff:127.0.0.1]/hook",
    "http://[fe80::1]/hook",
    "http://[fd00:ec2::254]/hook",
    "http://2130706433/hook",
    "http://0177.0.0.1/hook",
    "http://0x7f.1/hook",
    "http://224.0.0.1/hook",
    "http://0.0.0.0/hook",
    "http://sub.localhost/hook",
]


@pytest.mark.parametrize("url", UNSAFE_URLS)
def test_unsafe_webhook_urls_are_refused_at_submit(client, url):
    answer = client.post("/v1/generate", json={**BODY, "webhook_url": url})
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["name"] == "invalid_webhook_url" and error["field"] == "webhook_url"
    assert error["message"].startswith("webhook_url: ")


def test_webhook_field_errors_are_named(client):
    bad_event = client.post("/v1/generate", json={**BODY, "webhook_url": "https://example.com/h",
                                                  "webhook_events": ["finished"]})  # fmt: skip
    assert bad_event.status_code == 400 and bad_event.json()["error"]["name"] == "invalid_webhook_events"
    orphan = client.post("/v1/generate", json={**BODY, "webhook_events": ["completed"]})
    assert orphan.status_code == 400 and orphan.json()["error"]["field"] == "webhook_events"
    assert client.post("/v1/generate", json={**BODY, "webhook_url": ""}).json()["error"]["name"] == (
        "invalid_webhook_url"
    )


def test_a_name_that_resolves_to_a_private_address_is_refused_at_delivery(client, worker, dispatcher):
    host = socket.gethostname()
    try:
        address = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.skip(f"this machine's name {host!r} does not resolve")
    if host in ("127.0.0.1", "localhost") or not address.startswith(("127.", "10.", "192.168.", "172.")):
        pytest.skip(f"{host!r} resolves to {address}, not a private address")
    job_id = client.post("/v1/generate", json={**BODY, "webhook_url": f"http://{host}:9/hook"}).json()["id"]
    state = delivery(client, job_id, "completed", "refused")
    assert state["attempts"] == 1 and address in state["error"]


def test_key_default_webhook_applies_to_jobs_that_name_none(client, worker, dispatcher, receiver):
    refused = client.put("/v1/webhook", json={"webhook_url": "http://10.1.1.1/"})
    assert refused.status_code == 400 and refused.json()["error"]["name"] == "invalid_webhook_url"
    missing = client.put("/v1/webhook", json={})
    assert missing.status_code == 400 and missing.json()["error"]["field"] == "webhook_url"
    url = receiver.url("/default", host="localhost")  # allowed by name; connects to 127.0.0.1
    settings = client.put("/v1/webhook", json={"webhook_url": url, "webhook_events": ["completed"]}).json()
    assert settings["webhook_url"] == url and settings["secret"].startswith("whsec_")
    try:
        inherits = client.post("/v1/generate", json=BODY).json()
        assert inherits["webhook"]["url"] == url
        own = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/own")}).json()
        [request] = receiver.wait("/default", 1)
        assert verified(request, secret(client))["data"]["id"] == inherits["id"]
        assert request["headers"]["Host"] == f"localhost:{receiver.port}"
        assert verified(receiver.wait("/own", 1)[0], secret(client))["data"]["id"] == own["id"]
        with api_client(client.base_url, "test-key-2") as other:  # defaults are per key
            assert other.post("/v1/generate", json=BODY).json()["webhook"] is None
    finally:
        assert client.delete("/v1/webhook").json()["webhook_url"] is None
    assert client.post("/v1/generate", json=BODY).json()["webhook"] is None


def test_rotated_secret_signs_alongside_the_old_one(client, worker, dispatcher, receiver):
    old = secret(client)
    new = client.post("/v1/webhook/rotate-secret").json()["secret"]
    assert new != old and secret(client) == new
    client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/rotated")})
    [request] = receiver.wait("/rotated", 1)
    assert len(request["headers"]["webhook-signature"].split(" ")) == 2
    assert verified(request, new) == verified(request, old)


def test_a_delivery_whose_dispatcher_died_mid_attempt_is_sent_again(client, worker, dispatcher, receiver):
    receiver.delays["/crash"] = [8.0]  # the first attempt hangs: the dispatcher dies in it
    job = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/crash")}).json()
    receiver.wait("/crash", 1)
    dispatcher.kill()
    dispatcher.start()  # its reaper finds the delivery's lease over and puts it back
    first, again = receiver.wait("/crash", 2, timeout_s=60)[:2]
    assert first["headers"]["webhook-id"] == again["headers"]["webhook-id"] == f"msg_{job['id']}_completed"
    assert delivery(client, job["id"], "completed", "delivered")["state"] == "delivered"
