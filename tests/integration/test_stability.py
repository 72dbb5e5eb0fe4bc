"""Stability REST v1 compatibility: DreamStudio clients work by changing the base URL.

Shapes follow Stability's OpenAPI description of v1 (``shared/reference/stability-v1-openapi.yaml``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from latentq.fair_share import waiting
from latentq.keys import queue_name
from latentq.models import PACKAGED_REGISTRY, build_registry
from tests.conftest import API_KEY, api_settings, serve

AUTH = {"Authorization": f"Bearer {API_KEY}"}
SMALL = {"text_prompts": [{"text": "A lighthouse on a cliff", "weight": 1}], "width": 128, "height": 128,
         "steps": 10, "sampler": "K_EULER"}  # fmt: skip
URL = "/v1/generation/tiny-sd/text-to-image"


@pytest.fixture
def stability(api_url):
    with httpx.Client(base_url=api_url, headers=AUTH, timeout=120) as client:
        yield client


def assert_error(response: httpx.Response, status: int, name: str, fragment: str = "") -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"id", "name", "message", "status"} and body["status"] == status
    uuid.UUID(body["id"])
    assert body["name"] == name
    assert fragment in body["message"]


def png_size(data: bytes) -> tuple[int, int]:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image.size


@pytest.mark.slow
def test_published_text_to_image_example_answers_in_stabilitys_shape(stability, worker):
    # The request body of Stability's own example, verbatim (the engine id is ours).
    example = {"cfg_scale": 7, "clip_guidance_preset": "FAST_BLUE", "height": 512, "width": 512,
               "sampler": "K_DPM_2_ANCESTRAL", "samples": 1, "steps": 75,
               "text_prompts": [{"text": "A lighthouse on a cliff", "weight": 1}]}  # fmt: skip
    response = stability.post(URL, json=example)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == ["artifacts"]
    [artifact] = body["artifacts"]
    assert set(artifact) == {"base64", "seed", "finishReason"}
    assert artifact["finishReason"] == "SUCCESS"
    assert isinstance(artifact["seed"], int) and 1 <= artifact["seed"] <= 4_294_967_295
    assert png_size(base64.b64decode(artifact["base64"])) == (512, 512)


def test_accept_image_png_answers_with_the_png_and_its_headers(stability, worker):
    as_json = stability.post(URL, json={**SMALL, "seed": 77}).json()["artifacts"][0]
    response = stability.post(URL, json={**SMALL, "seed": 77}, headers={"Accept": "image/png"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["finish-reason"] == "SUCCESS"
    assert response.headers["seed"] == "77"
    assert int(response.headers["content-length"]) == len(response.content)
    assert png_size(response.content) == (128, 128)
    assert response.content == base64.b64decode(as_json["base64"])


def test_samples_give_one_artifact_each_with_consecutive_seeds(stability, worker):
    body = {**SMALL, "samples": 3, "seed": 500, "style_preset": "pixel-art", "extras": {"ignored": True}}
    artifacts = stability.post(URL, json=body).json()["artifacts"]
    assert [a["seed"] for a in artifacts] == [500, 501, 502]
    assert len({a["base64"] for a in artifacts}) == 3


@pytest.mark.parametrize(
    ("change", "headers", "name", "fragment"),
    [
        ({"width": 100}, {}, "invalid_height_or_width", "width: must be a multiple of 64 and at least 128"),
        ({"height": 64}, {}, "invalid_height_or_width", "height: must be a multiple of 64"),
        ({"height": 1088}, {}, "invalid_height_or_width", "height must be between 64 and 1024"),
        ({"samples": 2}, {"Accept": "image/png"}, "invalid_samples", "set to `application/json`"),
        ({"samples": 11}, {}, "invalid_samples", "samples: input should be less than or equal to 10"),
        ({"text_prompts": []}, {}, "invalid_prompts", "text_prompts: list should have at least 1 item"),
        ({"text_prompts": [{"weight": 1}]}, {}, "invalid_prompts", "text_prompts.0.text: is required"),
        ({"text_prompts": [{"text": "fog", "weight": -1}]}, {}, "invalid_prompts", "positive weight"),
        ({"steps": 9}, {}, "bad_request", "steps: input should be greater than or equal to 10"),
        ({"cfg_scale": 36}, {}, "bad_request", "cfg_scale: input should be less than or equal to 35"),
        ({"seed": -1}, {}, "bad_request", "seed: input should be greater than or equal to 0"),
        ({"sampler": "K_NOPE"}, {}, "bad_request", "'K_DPM_2_ANCESTRAL', 'K_EULER'"),
        ({"clip_guidance_preset": "FASTEST"}, {}, "bad_request", "'FAST_BLUE', 'FAST_GREEN', 'NONE'"),
        ({"style_preset": "nope"}, {}, "bad_request", "valid presets: 3d-model"),
        ({"engine": "x"}, {}, "bad_request", "Unknown field 'engine'"),
    ],
)  # fmt: skip
def test_bad_input_gets_stabilitys_error_names_and_nothing_is_queued(
    stability, redis, change, headers, name, fragment
):
    before = waiting(redis, queue_name("tiny-sd"))  # in RQ's queue or held for its turn
    body = {key: value for key, value in {**SMALL, **change}.items() if value is not None}
    assert_error(stability.post(URL, json=body, headers=headers), 400, name, fragment)
    assert waiting(redis, queue_name("tiny-sd")) <= before  # none added (a worker may take others)


def test_missing_text_prompts_and_malformed_json(stability):
    body = {k: v for k, v in SMALL.items() if k != "text_prompts"}
    assert_error(stability.post(URL, json=body), 400, "invalid_prompts", "text_prompts: is required")
    assert_error(stability.post(URL, content=b"{nope"), 400, "bad_request", "not valid JSON")


def test_pixel_count_follows_the_engines_registry_entry(redis_server, s3_server):
    entries = [{"id": "stable-diffusion-v1-5", "source": "/x", "family": "sd1"}]
    with serve(api_settings(redis_server, s3_server, models=entries)) as url:
        response = httpx.post(url + "/v1/generation/stable-diffusion-v1-5/text-to-image", headers=AUTH,
                              json={**SMALL, "width": 128, "height": 1024})  # fmt: skip
    assert_error(response, 400, "invalid_pixel_count", "between 262,144 and 1,048,576 pixels")


def test_unknown_engine_is_404(stability):
    response = stability.post("/v1/generation/some-fake-engine/text-to-image", json=SMALL)
    assert_error(response, 404, "not_found", "The specified engine (ID some-fake-engine) was not found.")


@pytest.mark.parametrize(
    ("headers", "fragment"),
    [({}, "missing authorization header"), ({"Authorization": "Bearer wrong"}, "not valid"),
     ({"Authorization": "wrong"}, "not valid")],
)  # fmt: skip
@pytest.mark.parametrize(
    "method_path", [("POST", URL), ("GET", "/v1/engines/list"), ("GET", "/v1/user/balance")]
)
def test_requests_without_a_valid_key_are_refused(api_url, headers, fragment, method_path):
    method, path = method_path
    response = httpx.request(method, api_url + path, headers=headers, json=SMALL)
    assert_error(response, 401, "unauthorized", fragment)


def test_a_bare_key_is_accepted_as_stability_clients_send_it(api_url):
    response = httpx.get(api_url + "/v1/engines/list", headers={"Authorization": API_KEY})
    assert response.status_code == 200
    # A request with a body too: past the request guard, to the route's own checks of the body.
    posted = httpx.post(api_url + URL, headers={"Authorization": API_KEY}, json={"text_prompts": []})
    assert posted.status_code == 400, posted.text


def test_engines_list_is_the_registry(stability):
    engines = stability.get("/v1/engines/list").json()
    assert [e["id"] for e in engines] == list(build_registry(PACKAGED_REGISTRY, (), None).models)
    for engine in engines:
        assert set(engine) == {"id", "name", "description", "type"}
        assert engine["type"] == "PICTURE" and all(isinstance(v, str) and v for v in engine.values())


def test_account_and_balance_in_stabilitys_shape(stability):
    account = stability.get("/v1/user/account").json()
    assert {"id", "email", "organizations"} <= set(account)
    assert "@" in account["email"] and account["id"].startswith("bootstrap-")
    assert hashlib.sha256(b"test-key-1").hexdigest()[:8] not in account["id"]  # nothing of the key
    [org] = account["organizations"]
    assert set(org) == {"id", "name", "role", "is_default"} and org["is_default"] is True
    other = httpx.get(str(stability.base_url) + "/v1/user/account", headers={"Authorization": "test-key-2"})
    assert other.json()["id"] != account["id"]  # one account per key
    balance = stability.get("/v1/user/balance").json()
    assert list(balance) == ["credits"] and isinstance(balance["credits"], float) and balance["credits"] > 0


def test_a_job_that_outlasts_the_wait_is_not_lost(redis_server, s3_server):
    entries = [{"id": "nobody-serves-this", "source": "/x", "family": "sd1"}]
    settings = api_settings(redis_server, s3_server, models=entries, sync_timeout_s=1)
    with serve(settings) as url:
        response = httpx.post(url + "/v1/generation/nobody-serves-this/text-to-image", headers=AUTH,
                              json={**SMALL, "width": 512, "height": 512})  # fmt: skip
        assert_error(response, 504, "server_error", "did not finish within 1 s; it is still queued")
        job_id = response.json()["message"].split()[1]
        job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=AUTH).json()
    assert job["status"] == "queued" and job["model"] == "nobody-serves-this"


def test_a_job_canceled_while_its_answer_waits_is_answered_as_canceled(redis_server, s3_server):
    model = f"waits-{uuid.uuid4().hex[:8]}"  # no worker serves it: the job waits until canceled
    settings = api_settings(redis_server, s3_server, models=[{"id": model, "source": "/x", "family": "sd1"}],
                            sync_timeout_s=60)  # fmt: skip
    with serve(settings) as url, httpx.Client(base_url=url, headers=AUTH, timeout=90) as client, \
            ThreadPoolExecutor(1) as pool:  # fmt: skip
        waiting_answer = pool.submit(client.post, f"/v1/generation/{model}/text-to-image",
                                     json={**SMALL, "width": 512, "height": 512})  # fmt: skip
        job_ids: list[str] = []
        deadline = time.monotonic() + 30
        while not job_ids and not waiting_answer.done() and time.monotonic() < deadline:
            jobs = client.get("/v1/jobs", params={"status": "queued"}).json()["data"]
            job_ids = [job["id"] for job in jobs if job["model"] == model]
        assert client.post(f"/v1/jobs/{job_ids[0]}/cancel").json()["status"] == "canceled"
        response = waiting_answer.result(timeout=30)
    assert_error(response, 409, "job_canceled", f"Job {job_ids[0]} was canceled")
