"""Bad input, missing keys and unknown jobs: named errors over HTTP, never a 500, nothing queued."""

from __future__ import annotations

import httpx
import pytest

from api.request_guard import MAX_BODY_BYTES
from latentq.fair_share import waiting
from latentq.keys import queue_name
from tests.conftest import API_KEY, api_settings, serve

VALID = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


@pytest.fixture
def queue_length(redis):
    """How many jobs wait for tiny-sd: in RQ's queue, or held back for their account's turn."""
    return lambda: waiting(redis, queue_name("tiny-sd"))


@pytest.mark.parametrize(
    ("change", "name", "fragment"),
    [
        ({"width": 100}, "invalid_width", "width must be a multiple of 8 (got 100) for model 'tiny-sd'"),
        ({"height": 2048}, "invalid_height", "height must be between 64 and 1024"),
        ({"width": 56}, "invalid_width", "between 64 and 1024"),
        ({"width": 64.5}, "invalid_width", "width: input should be a valid integer"),
        ({"steps": 0}, "invalid_steps", "steps: input should be greater than or equal to 1"),
        ({"steps": 151}, "invalid_steps", "less than or equal to 150"),
        ({"steps": "20"}, "invalid_steps", "steps: input should be a valid integer"),
        ({"cfg_scale": 35.5}, "invalid_cfg_scale", "cfg_scale: input should be less than or equal to 35"),
        ({"cfg_scale": -1}, "invalid_cfg_scale", "greater than or equal to 0"),
        ({"samples": 11}, "invalid_samples", "samples: input should be less than or equal to 10"),
        ({"samples": 0}, "invalid_samples", "greater than or equal to 1"),
        ({"seed": -1}, "invalid_seed", "seed: input should be greater than or equal to 0"),
        ({"seed": 4_294_967_296}, "invalid_seed", "less than or equal to 4294967295"),
        ({"sampler": "K_NOPE"}, "invalid_sampler", "'DDIM', 'DDPM', 'K_DPMPP_2M', "),
        ({"sampler": "K_EULER_ANCESTRAL_KARRAS"}, "invalid_sampler", "'UNIPC' or 'LCM' (got"),
        ({"model": "sd-99"}, "invalid_model", "unknown model 'sd-99'; registered models: tiny-sd, tiny-sdxl"),
        ({"style_preset": "vaporwave"}, "invalid_style_preset", "valid presets: 3d-model, analog-film,"),
        ({"output_format": "gif"}, "invalid_output_format", "'png', 'jpeg' or 'webp'"),
        ({"text_prompts": []}, "invalid_text_prompts", "at least 1 item"),
        ({"text_prompts": [{"text": "a", "weight": "1"}]}, "invalid_text_prompts", "valid number"),
        (
            {"text_prompts": [{"text": "a", "weight": 101}]},
            "invalid_text_prompts",
            "less than or equal to 100",
        ),
        (
            {"text_prompts": [{"text": "a", "colour": 1}]},
            "unknown_field",
            "Unknown field 'text_prompts.0.colour'.",
        ),
        ({"text_prompts": [{"text": "a"}] * 17}, "invalid_text_prompts", "at most 16 items"),
        ({"negative_prompt": ""}, "invalid_negative_prompt", "at least 1 character"),
        ({"height": 1024 + 8, "width": 1024}, "invalid_height", "between 64 and 1024"),
        ({"prompt": ""}, "invalid_prompt", "prompt: string should have at least 1 character"),
        ({"prompt": "x" * 2001}, "invalid_prompt", "at most 2000 characters"),
        ({"prompt": 5}, "invalid_prompt", "prompt: input should be a valid string"),
        ({"negative_prompt": "x" * 2001}, "invalid_negative_prompt", "at most 2000 characters"),
        ({"colour": "blue"}, "unknown_field", "Unknown field 'colour'"),
    ],
)
def test_invalid_field_is_named(client, queue_length, change, name, fragment):
    before = queue_length()
    response = client.post("/v1/generate", json={**VALID, **change})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["name"] == name
    assert fragment in error["message"]
    assert error["field"].split(".")[0] == next(iter(change))
    assert queue_length() <= before  # none added (a worker may be taking earlier ones)


def test_missing_prompt_is_named(client):
    response = client.post("/v1/generate", json={"width": 64})
    assert response.status_code == 400
    message = "prompt: is required (or give text_prompts)"
    assert response.json()["error"] == {
        "name": "invalid_prompt",
        "message": message,
        "field": "prompt",
        "errors": [{"field": "prompt", "message": message}],
    }


@pytest.mark.parametrize(
    ("body", "name", "field", "fragment"),
    [
        ({"prompt": "a", "text_prompts": [{"text": "b"}]}, "invalid_prompt", "prompt", "not both"),
        ({"text_prompts": [{"text": "fog", "weight": -1}]}, "invalid_text_prompts", "text_prompts",
         "at least one prompt with text and a positive weight"),
        ({"text_prompts": [{"text": "a", "weight": 0}]}, "invalid_text_prompts", "text_prompts",
         "positive weight"),
        ({"prompt": "   "}, "invalid_prompt", "prompt", "positive weight"),
    ],
)  # fmt: skip
def test_prompt_combinations(client, queue_length, body, name, field, fragment):
    before = queue_length()
    response = client.post("/v1/generate", json=body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["name"], error["field"]) == (name, field)
    assert fragment in error["message"]
    assert queue_length() <= before  # none added (a worker may be taking earlier ones)


@pytest.mark.parametrize(
    ("model", "size", "name", "fragment"),
    [
        (
            "strict-sd15",
            (128, 1024),
            "invalid_pixel_count",
            "between 262,144 and 1,048,576 pixels (got 128x1024",
        ),
        ("strict-sd15", (1024, 1032), "invalid_pixel_count", "(got 1024x1032 = 1,056,768)"),
        ("strict-sd15", (64, 512), "invalid_width", "width must be between 128 and 2048"),
        ("strict-sdxl", (1024, 960), "invalid_size", "not one of this model's sizes: 1024x1024, 1152x896"),
    ],
)
def test_size_rules_come_from_the_registry_entry(redis_server, s3_server, model, size, name, fragment):
    entries = [{"id": "strict-sd15", "source": "/x", "family": "sd1"},
               {"id": "strict-sdxl", "source": "/x", "family": "sdxl"}]  # fmt: skip
    with serve(api_settings(redis_server, s3_server, models=entries)) as url:
        body = {"prompt": "a", "model": model, "width": size[0], "height": size[1]}
        response = httpx.post(url + "/v1/generate", json=body, headers={"Authorization": f"Bearer {API_KEY}"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["name"] == name and fragment in error["message"] and f"model '{model}'" in error["message"]


def test_every_problem_is_listed(client):
    error = client.post("/v1/generate", json={"prompt": "a", "samples": 0, "steps": 0}).json()["error"]
    assert [item["field"] for item in error["errors"]] == ["steps", "samples"]


@pytest.mark.parametrize(
    ("body", "status", "name"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_request"),
        (b'"prompt"', 400, "invalid_request"),
        (b"\xff\xfe", 400, "invalid_json"),
        (b"x" * (MAX_BODY_BYTES + 1), 413, "payload_too_large"),
    ],
)
def test_malformed_bodies(client, body, status, name):
    response = client.post("/v1/generate", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["error"]["name"] == name


def test_json_is_read_whatever_the_content_type(client, worker):
    # curl -d sends application/x-www-form-urlencoded; the README's example relies on this.
    response = client.post(
        "/v1/generate",
        content=b'{"prompt": "a", "width": 64, "height": 64, "steps": 1}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 202


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "test-key-1"},
        {"Authorization": "Basic dGVzdA=="},
        {"Authorization": "Bearer"},
    ],
)
@pytest.mark.parametrize(
    ("method", "path"), [("POST", "/v1/generate"), ("GET", "/v1/jobs/0b4f3c1e-0000-4000-8000-000000000000")]
)
def test_requests_without_a_valid_key_are_refused(api_url, queue_length, headers, method, path):
    before = queue_length()
    response = httpx.request(method, api_url + path, headers=headers, json=VALID)
    assert response.status_code == 401
    assert response.json()["error"]["name"] == "unauthorized"
    assert response.headers["www-authenticate"] == "Bearer"
    assert queue_length() <= before  # none added (a worker may be taking earlier ones)


def test_every_configured_key_is_accepted(api_url, worker):
    response = httpx.post(
        api_url + "/v1/generate", json=VALID, headers={"Authorization": "Bearer test-key-2"}
    )
    assert response.status_code == 202


@pytest.mark.parametrize("job_id", ["0b4f3c1e-0000-4000-8000-000000000000", "not-a-uuid", "..%2F..%2Fetc"])
def test_unknown_job_is_404(client, job_id):
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 404
    assert response.json()["error"]["name"] == "not_found"


def test_unknown_route_and_method_use_the_error_envelope(client):
    assert client.get("/v1/nope").json()["error"]["name"] == "not_found"
    response = client.delete("/v1/generate")
    assert response.status_code == 405
    assert response.json()["error"]["name"] == "method_not_allowed"
