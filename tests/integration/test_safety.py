"""The safety checker through the service: a real worker checks each image after decoding with the
embedded checkers (``tiny-safety-all`` flags every image, ``tiny-safety-none`` none); ``flag`` marks
and keeps pixels, ``filter`` blacks out and says so on every route, ``off`` is untouched; a model
that says nothing gets the deployment's ``LATENTQ_SAFETY`` and ``LATENTQ_SAFETY_CHECKER``."""

from __future__ import annotations

import base64
import io
import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    API_KEY,
    api_settings,
    embedded_model,
    running_worker,
    serve,
    wait_for_job,
    worker_env,
)
from tests.integration.test_generate import download_image
from tests.integration.test_image_jobs import pixels, seeded

TINY = {"source": "embedded:tiny-sd", "family": "sd1",
        "limits": {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576},
        "defaults": {"width": 64, "height": 64, "steps": 20, "sampler": "K_EULER"}}  # fmt: skip
#: Models whose safety says: flagged (every image flagged, kept), filtered (flagged and blacked out),
#: off (not checked), and one that says nothing (the deployment's filter, with its checker that flags none).
ENTRIES = [
    {**TINY, "id": "tiny-sd-flagged", "safety": "flag", "safety_checker": "tiny-safety-all"},
    {**TINY, "id": "tiny-sd-filtered", "safety": "filter", "safety_checker": "tiny-safety-all"},
    {**TINY, "id": "tiny-sd-unchecked", "safety": "off"},
    {**TINY, "id": "tiny-sd-deployment"},
]
DEPLOYMENT = {"safety": "filter", "safety_checker": "tiny-safety-none"}
BODY = {"prompt": "a lighthouse at dusk", "steps": 6, "sampler": "K_EULER", "seed": 77}
AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def safety_api(redis_server, s3_server, models_dir, tiny_model, tmp_path_factory):
    """A worker serving the four models with the deployment's safety settings, and an API that knows them."""
    for name in ("tiny-safety-all", "tiny-safety-none"):
        embedded_model(models_dir, name)
    served = ",".join(entry["id"] for entry in ENTRIES)
    env = worker_env(redis_server, s3_server, models_dir, served, models=json.dumps(ENTRIES), **DEPLOYMENT)
    log = tmp_path_factory.mktemp("logs") / "safety-worker.log"
    with (
        running_worker(env, log, "tiny-sd-deployment"),
        serve(api_settings(redis_server, s3_server, models=ENTRIES, **DEPLOYMENT)) as url,
        httpx.Client(base_url=url, headers=AUTH, timeout=60) as client,
    ):
        yield client


@pytest.fixture(scope="module")
def reference(tiny_model) -> np.ndarray:
    """Plain diffusers' image of BODY (the pipeline loaded without a safety checker)."""
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    image = pipe(BODY["prompt"], width=64, height=64, num_inference_steps=BODY["steps"], guidance_scale=7.0,
                 generator=seeded(BODY["seed"])).images[0]  # fmt: skip
    return pixels(image)


def generate(client: httpx.Client, model: str, **changes) -> tuple[dict, list[np.ndarray]]:
    response = client.post("/v1/generate", json={**BODY, "model": model, **changes})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job, [pixels(download_image(image["url"])) for image in job["images"]]


def test_flag_marks_every_image_and_keeps_its_pixels(safety_api, reference):
    job, [served] = generate(safety_api, "tiny-sd-flagged")
    assert (job["images"][0]["nsfw"], job["images"][0]["filtered"]) == (True, False)
    assert np.array_equal(served, reference)  # checked after the pipeline call: plain diffusers' pixels


def test_filter_blacks_out_flagged_images_and_shows_no_previews(safety_api):
    job, images = generate(safety_api, "tiny-sd-filtered", samples=2, preview=True)
    assert [(image["nsfw"], image["filtered"]) for image in job["images"]] == [(True, True)] * 2
    for served in images:
        assert served.shape == (64, 64, 3) and not served.any()
    assert job["preview_url"] is None  # a preview would show what the filter hides


def test_stability_routes_answer_content_filtered(safety_api):
    body = {"text_prompts": [{"text": BODY["prompt"]}], "steps": 10, "seed": 77, "sampler": "K_EULER",
            "samples": 2}  # fmt: skip
    response = safety_api.post("/v1/generation/tiny-sd-filtered/text-to-image", json=body)
    assert response.status_code == 200, response.text
    artifacts = response.json()["artifacts"]
    assert [artifact["finishReason"] for artifact in artifacts] == ["CONTENT_FILTERED"] * 2
    assert not pixels(Image.open(io.BytesIO(base64.b64decode(artifacts[0]["base64"])))).any()
    png = safety_api.post("/v1/generation/tiny-sd-filtered/text-to-image", json={**body, "samples": 1},
                          headers={"Accept": "image/png"})  # fmt: skip
    assert png.status_code == 200 and png.headers["Finish-Reason"] == "CONTENT_FILTERED"
    # A checked image that passed is a SUCCESS, as before.
    passed = safety_api.post("/v1/generation/tiny-sd-deployment/text-to-image", json=body)
    assert [artifact["finishReason"] for artifact in passed.json()["artifacts"]] == ["SUCCESS"] * 2


def test_openai_route_answers_content_policy_violation_when_every_image_is_filtered(safety_api):
    body = {"prompt": BODY["prompt"], "model": "tiny-sd-filtered", "size": "64x64", "steps": 6}
    response = safety_api.post("/v1/images/generations", json=body)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["code"] == "content_policy_violation"
    passed = safety_api.post("/v1/images/generations", json={**body, "model": "tiny-sd-deployment"})
    assert passed.status_code == 200 and len(passed.json()["data"]) == 1


def test_deployment_default_checks_models_that_say_nothing_and_off_is_untouched(safety_api, reference):
    job, [served] = generate(safety_api, "tiny-sd-deployment")
    assert (job["images"][0]["nsfw"], job["images"][0]["filtered"]) == (False, False)
    assert np.array_equal(served, reference)
    job, [served] = generate(safety_api, "tiny-sd-unchecked")
    assert (job["images"][0]["nsfw"], job["images"][0]["filtered"]) == (None, False)
    assert np.array_equal(served, reference)
    models = {model["id"]: model["safety"] for model in safety_api.get("/v1/models").json()["data"]}
    assert models["tiny-sd-flagged"] == "flag" and models["tiny-sd-deployment"] == "filter"
    assert models["tiny-sd-unchecked"] == "off"
