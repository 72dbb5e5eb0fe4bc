"""Text-to-image end to end: HTTP → Redis/RQ → warm worker → S3 → the image URL."""

from __future__ import annotations

import io
import time

import httpx
import numpy as np
from PIL import Image

from tests.conftest import object_folder, wait_for_job

BODY = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 20, "seed": 42}


def download_image(url: str) -> Image.Image:
    """Fetch ``url`` over plain HTTP (no credentials) and decode it."""
    response = httpx.get(url, timeout=30)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def diffusers_reference(model_dir, seed: int, **overrides) -> Image.Image:
    """What plain diffusers gives for the same model, request and seed with K_EULER."""
    import torch
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    pipe = AutoPipelineForText2Image.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    args = {
        "prompt": BODY["prompt"],
        "width": 64,
        "height": 64,
        "num_inference_steps": 20,
        "guidance_scale": 7.0,
    }
    args.update(overrides)
    return pipe(**args, generator=torch.Generator("cpu").manual_seed(seed)).images[0]


def test_job_runs_end_to_end_and_matches_plain_diffusers(client, worker, tiny_model):
    response = client.post("/v1/generate", json=BODY)
    assert response.status_code == 202
    submitted = response.json()
    assert submitted["status"] == "queued"
    assert response.headers["location"] == f"/v1/jobs/{submitted['id']}"

    job = wait_for_job(client, submitted["id"])

    assert job["status"] == "succeeded", job["error"]
    assert job["error"] is None
    assert job["started_at"] and job["finished_at"]
    assert job["created_at"] <= job["started_at"] <= job["finished_at"]
    [image] = job["images"]
    assert (image["seed"], image["width"], image["height"]) == (42, 64, 64)
    served = download_image(image["url"])
    assert served.size == (64, 64)
    expected = diffusers_reference(tiny_model, seed=42)
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(expected))


def test_negative_prompt_and_cfg_reach_the_pipeline(client, worker, tiny_model):
    body = {**BODY, "negative_prompt": "fog", "cfg_scale": 3.5, "seed": 7}
    job = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    served = download_image(job["images"][0]["url"])
    expected = diffusers_reference(tiny_model, seed=7, negative_prompt="fog", guidance_scale=3.5)
    assert np.array_equal(np.asarray(served.convert("RGB")), np.asarray(expected))


def test_samples_use_consecutive_seeds_and_distinct_keys(client, worker):
    job = wait_for_job(
        client, client.post("/v1/generate", json={**BODY, "samples": 3, "seed": 100}).json()["id"]
    )
    assert job["status"] == "succeeded"
    assert [image["seed"] for image in job["images"]] == [100, 101, 102]
    pixels = [np.asarray(download_image(image["url"])) for image in job["images"]]
    assert not np.array_equal(pixels[0], pixels[1])
    paths = {httpx.URL(image["url"]).path for image in job["images"]}
    assert paths == {f"/latentq-test/{object_folder(client, job['id'])}/{n}.png" for n in range(3)}


def test_seed_zero_is_replaced_by_a_reported_random_seed(client, worker):
    job = wait_for_job(client, client.post("/v1/generate", json={**BODY, "seed": 0, "steps": 2}).json()["id"])
    seed = job["images"][0]["seed"]
    assert 1 <= seed <= 4_294_967_295
    assert job["request"]["seed"] == seed


def test_non_square_size_is_honoured(client, worker):
    job = wait_for_job(
        client,
        client.post("/v1/generate", json={**BODY, "width": 136, "height": 72, "steps": 2}).json()["id"],
    )
    assert download_image(job["images"][0]["url"]).size == (136, 72)


def test_image_url_needs_its_signature(client, worker):
    job = wait_for_job(client, client.post("/v1/generate", json={**BODY, "steps": 2}).json()["id"])
    url = httpx.URL(job["images"][0]["url"])
    assert httpx.get(url.copy_with(query=None), timeout=10).status_code == 403


def test_each_read_signs_a_fresh_url(client, worker):
    job_id = client.post("/v1/generate", json={**BODY, "steps": 2}).json()["id"]
    first = wait_for_job(client, job_id)["images"][0]["url"]
    time.sleep(1.1)  # X-Amz-Date has one-second resolution
    second = client.get(f"/v1/jobs/{job_id}").json()["images"][0]["url"]
    assert first != second
    assert download_image(second).size == (64, 64)
