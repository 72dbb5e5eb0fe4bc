"""Generated bodies, valid and not, against both job-creating routes: a named error or a job, never a 500."""

from __future__ import annotations

import json

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import Redis
from rq import Queue

from latentq.errors import ERRORS
from latentq.keys import queue_name
from tests.conftest import API_KEY, api_settings, serve

# A registry of one model that no worker serves: accepted jobs just wait, and are dropped after.
MODEL = {
    "id": "fuzz-sd",
    "source": "/nowhere",
    "family": "sd1",
    "limits": {"min_side": 64, "min_pixels": 4096},
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3),
    max_leaves=6,
)
prompts = st.lists(
    st.fixed_dictionaries({"text": st.text(max_size=40)}, optional={"weight": st.floats(-150, 150)}),
    max_size=3,
)
FIELDS = {
    "model": st.sampled_from(["fuzz-sd", "nope"]) | json_values,
    "prompt": st.text(max_size=40) | json_values,
    "negative_prompt": st.text(max_size=40) | json_values,
    "text_prompts": prompts | json_values,
    "width": st.integers(0, 2100) | json_values,
    "height": st.integers(0, 2100) | json_values,
    "steps": st.integers(-5, 200) | json_values,
    "cfg_scale": st.floats(-5, 40) | json_values,
    "samples": st.integers(-1, 12) | json_values,
    "seed": st.integers(-5, 2**33) | json_values,
    "sampler": st.sampled_from(["K_EULER", "K_LMS_KARRAS", "k_euler", "X"]) | json_values,
    "style_preset": st.sampled_from(["anime", "none"]) | json_values,
    "output_format": st.sampled_from(["png", "webp", "gif"]) | json_values,
    "clip_guidance_preset": st.sampled_from(["FAST_BLUE", "NONE", "x"]) | json_values,
    "extra_field": json_values,
}
bodies = st.fixed_dictionaries({}, optional=FIELDS) | json_values


@pytest.fixture(scope="module")
def fuzz_api(redis_server, s3_server):
    settings_ = api_settings(
        redis_server, s3_server, models=[MODEL], default_model="fuzz-sd", sync_timeout_s=0.05
    )
    with (
        serve(settings_) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}) as c,
    ):
        yield c
    Queue(queue_name("fuzz-sd"), connection=Redis.from_url(redis_server.url)).empty()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_our_route_answers_a_job_or_a_named_error(fuzz_api, body):
    response = fuzz_api.post("/v1/generate", content=json.dumps(body))
    assert response.status_code in (202, 400), response.text
    if response.status_code == 400:
        error = response.json()["error"]
        assert error["name"] in ERRORS and error["message"]
        if error["name"].startswith("invalid_") and error["name"] not in ("invalid_json", "invalid_request"):
            assert error["field"].split(".")[0] in body or error["field"] in ("prompt", "width")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=bodies)
def test_stability_route_answers_in_its_shape(fuzz_api, body):
    response = fuzz_api.post("/v1/generation/fuzz-sd/text-to-image", content=json.dumps(body))
    # 504: a valid job outlived the (tiny) wait; it stays queued.
    assert response.status_code in (400, 504), response.text
    error = response.json()
    assert set(error) == {"id", "name", "message", "status"} and error["message"]
