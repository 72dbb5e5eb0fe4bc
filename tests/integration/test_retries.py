"""Safe retries: Idempotency-Key on submits, and Prefer: wait=N."""

from __future__ import annotations

import base64
import io
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from latentq.fair_share import waiting
from latentq.keys import job_key, queue_name
from tests.conftest import API_KEY, BUCKET, api_settings, object_folder, serve
from tests.integration.test_lifecycle import BODY, IDLE

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def idle_api(redis_server, s3_server):
    with serve(api_settings(redis_server, s3_server, models=[IDLE], default_model="idle-sd")) as url:
        yield url


def post(url: str, body: dict, key: str, api_key: str = API_KEY) -> httpx.Response:
    headers = {"Authorization": f"Bearer {api_key}", "Idempotency-Key": key}
    return httpx.post(url + "/v1/generate", json=body, headers=headers, timeout=30)


def test_repeat_with_the_same_key_and_body_returns_the_original_job(idle_api, redis):
    key = f"order-{uuid.uuid4()}"
    first = post(idle_api, BODY, key)
    before = waiting(redis, queue_name("idle-sd"))
    again = post(idle_api, {**BODY}, key)
    assert (first.status_code, again.status_code) == (202, 200)
    assert again.json()["id"] == first.json()["id"] and again.headers["location"] == first.headers["location"]
    assert waiting(redis, queue_name("idle-sd")) == before  # nothing new queued
    conflict = post(idle_api, {**BODY, "seed": 9}, key)
    assert conflict.status_code == 409 and conflict.json()["error"]["name"] == "idempotency_conflict"
    # Keys belong to the API key that sent them.
    other = post(idle_api, BODY, key, api_key="test-key-2")
    assert other.status_code == 202 and other.json()["id"] != first.json()["id"]


def input_objects(s3_server) -> set[str]:
    """The keys of every stored input image in the test bucket."""
    pages = s3_server.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
    return {item["Key"] for page in pages for item in page.get("Contents", []) if "/inputs/" in item["Key"]}


def test_a_repeated_key_stores_no_input_image(idle_api, s3_server):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "blue").save(png, format="PNG")
    body = {"prompt": "a lighthouse", "init_image": base64.b64encode(png.getvalue()).decode(), "seed": 3}
    key = f"order-{uuid.uuid4()}"
    first = post(idle_api, body, key)
    assert first.status_code == 202
    stored = input_objects(s3_server)
    with httpx.Client(base_url=idle_api, headers={"Authorization": f"Bearer {API_KEY}"}) as client:
        assert f"{object_folder(client, first.json()['id'])}/inputs/init.png" in stored
    again = post(idle_api, body, key)
    assert again.status_code == 200 and again.json()["id"] == first.json()["id"]
    assert input_objects(s3_server) == stored  # the repeat uploaded nothing: no orphaned objects


def claim_of(redis, job_id: str) -> str:
    """The Redis key of the idempotency claim that names ``job_id``."""
    [name] = [name for name in redis.scan_iter("latentq:idempotency:*")
              if json.loads(redis.get(name))["job_id"] == job_id]  # fmt: skip
    return name


def test_a_key_lives_as_long_as_its_job(idle_api, redis):
    job = post(idle_api, {**BODY, "retention_s": 120}, f"order-{uuid.uuid4()}").json()
    assert 110 <= redis.ttl(claim_of(redis, job["id"])) <= 120  # not a day: a retry after it expired is new
    assert 110 <= redis.ttl(job_key(job["id"])) <= 120


def test_a_key_whose_job_never_appeared_is_taken_over_by_the_next_request(idle_api, redis):
    key = f"order-{uuid.uuid4()}"
    job = post(idle_api, BODY, key).json()
    name = claim_of(redis, job["id"])
    # As if the request that claimed the key a minute ago had died before queueing its job.
    redis.set(name, json.dumps({**json.loads(redis.get(name)), "at": time.time() - 60}), keepttl=True)
    redis.delete(job_key(job["id"]))
    again = post(idle_api, BODY, key)
    assert again.status_code == 202 and again.json()["id"] != job["id"]
    assert post(idle_api, BODY, key).json()["id"] == again.json()["id"]  # the key now names the new job


def test_ten_concurrent_duplicates_create_one_job(idle_api, redis):
    before = waiting(redis, queue_name("idle-sd"))  # RQ's list and the fair-share lists (it caps RQ's)
    key = f"burst-{uuid.uuid4()}"
    with ThreadPoolExecutor(10) as pool:
        responses = list(pool.map(lambda _: post(idle_api, BODY, key), range(10)))
    assert len({response.json()["id"] for response in responses}) == 1
    assert sorted(response.status_code for response in responses) == [200] * 9 + [202]
    assert waiting(redis, queue_name("idle-sd")) == before + 1


@pytest.mark.parametrize("key", ["has space", "x" * 256, "", b"\xfcmlaut"])
def test_malformed_idempotency_keys_are_refused(idle_api, key):
    headers = {**AUTH, "Idempotency-Key": key}
    response = httpx.post(idle_api + "/v1/generate", json=BODY, headers=headers)
    assert response.status_code == 400 and response.json()["error"]["name"] == "invalid_idempotency_key"


def test_prefer_wait_answers_with_the_finished_job(client, worker):
    response = client.post("/v1/generate", json=BODY, headers={"Prefer": "wait=30"})
    assert response.status_code == 200, response.text
    assert response.headers["preference-applied"] == "wait=30"
    job = response.json()
    assert job["status"] == "succeeded" and job["images"][0]["url"]


def test_prefer_wait_gives_up_with_202_when_the_job_takes_longer(idle_api):
    started = time.monotonic()
    response = httpx.post(
        idle_api + "/v1/generate", json=BODY, headers={**AUTH, "Prefer": "wait=1"}, timeout=30
    )
    assert response.status_code == 202 and response.json()["status"] == "queued"
    assert 1 <= time.monotonic() - started < 5


def test_jobs_are_listed_per_key_newest_first_and_isolated(idle_api):
    mine = httpx.Client(base_url=idle_api, headers={"Authorization": "Bearer test-key-2"})
    other = httpx.Client(base_url=idle_api, headers=AUTH)
    before = {job["id"] for job in mine.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    ids = [mine.post("/v1/generate", json={**BODY, "seed": n + 1}).json()["id"] for n in range(5)]
    mine.delete(f"/v1/jobs/{ids[1]}")
    listed = [job["id"] for job in mine.get("/v1/jobs", params={"limit": 100}).json()["data"]]
    assert [job_id for job_id in listed if job_id not in before] == ids[::-1]
    pages, cursor = [], None
    while True:  # two at a time, through every page
        page = mine.get("/v1/jobs", params={"limit": 2, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([job["id"] for job in page["data"]])
        if not (cursor := page["next_cursor"]):
            break
    assert [job_id for chunk in pages for job_id in chunk] == listed and all(len(c) <= 2 for c in pages)
    canceled = mine.get("/v1/jobs", params={"status": "canceled", "limit": 100}).json()["data"]
    assert ids[1] in {job["id"] for job in canceled} and all(job["status"] == "canceled" for job in canceled)
    # Another key sees none of them and cannot read, follow or cancel them.
    assert not set(ids) & {job["id"] for job in other.get("/v1/jobs", params={"limit": 100}).json()["data"]}
    job = f"/v1/jobs/{ids[0]}"
    for method, path in [
        ("GET", job),
        ("GET", f"{job}/events"),
        ("POST", f"{job}/cancel"),
        ("GET", f"{job}/preview"),
    ]:
        assert other.request(method, path).status_code == 404
    assert mine.get("/v1/jobs", params={"status": "nope"}).status_code == 400
    for job_id in ids:
        mine.delete(f"/v1/jobs/{job_id}")


def test_a_job_lives_for_the_retention_it_asks_for(idle_api, redis):
    from latentq.keys import job_events_key, job_key, rq_job_key

    with httpx.Client(base_url=idle_api, headers=AUTH) as client:
        job_id = client.post("/v1/generate", json={**BODY, "retention_s": 120}).json()["id"]
        assert 115 <= redis.ttl(job_key(job_id)) <= 120 and 115 <= redis.ttl(job_events_key(job_id)) <= 120
        client.delete(f"/v1/jobs/{job_id}")
        assert 115 <= redis.ttl(job_events_key(job_id)) <= 120  # later events keep the job's TTL
        default = client.post("/v1/generate", json=BODY).json()["id"]
        assert (
            redis.ttl(job_key(default)) > 86000 and redis.ttl(rq_job_key(default)) == -1
        )  # RQ: queued, no TTL
        client.delete(f"/v1/jobs/{default}")
        too_long = client.post("/v1/generate", json={**BODY, "retention_s": 8 * 86400}).json()["error"]
        too_short = client.post("/v1/generate", json={**BODY, "retention_s": 59}).json()["error"]
    assert too_long["name"] == too_short["name"] == "invalid_retention_s"
    assert "at most 604800 seconds" in too_long["message"]


def test_lifecycle_command_applies_the_retention_rule_and_keeps_other_rules(redis_server, s3_server):
    from latentq.storage import ImageStore
    from latentq_dev.lifecycle import RULE_ID, apply_rule, retention_rule

    settings = api_settings(redis_server, s3_server, max_job_retention_s=3 * 86400 + 1)
    store = ImageStore(settings)
    other = {
        "ID": "someone-elses",
        "Status": "Enabled",
        "Filter": {"Prefix": "logs/"},
        "Expiration": {"Days": 30},
    }
    store.client.put_bucket_lifecycle_configuration(
        Bucket=store.bucket, LifecycleConfiguration={"Rules": [other]}
    )
    for _ in range(2):  # idempotent
        rules = {rule["ID"]: rule for rule in apply_rule(store, retention_rule(settings))}
    assert set(rules) == {"someone-elses", RULE_ID}
    assert rules[RULE_ID]["Expiration"] == {"Days": 4}  # 3 days and a second, rounded up
