"""Two models of different families, each served by its own worker; the registry over HTTP."""

from __future__ import annotations

import numpy as np
import pytest
from redis import Redis

from latentq.keys import rq_job_key
from tests.conftest import wait_for_job
from tests.integration.test_generate import download_image


@pytest.fixture(scope="module")
def sdxl_pipe(tiny_sdxl_model):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_sdxl_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ran_on(redis_url: str, job_id: str) -> str:
    return Redis.from_url(redis_url).hget(rq_job_key(job_id), "worker_name").decode()


def test_each_model_runs_on_the_worker_that_serves_it(client, worker, sdxl_worker, sdxl_pipe, redis_server):
    import torch

    body = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 10, "seed": 5, "sampler": "K_EULER"}
    sdxl = wait_for_job(client, client.post("/v1/generate", json={**body, "model": "tiny-sdxl"}).json()["id"])
    sd = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    assert (sdxl["status"], sd["status"]) == ("succeeded", "succeeded")
    assert (sdxl["model"], sd["model"]) == ("tiny-sdxl", "tiny-sd")
    assert ran_on(redis_server.url, sdxl["id"]) == "test-worker-tiny-sdxl"
    assert ran_on(redis_server.url, sd["id"]) == "test-worker-tiny-sd"
    expected = sdxl_pipe("a lighthouse", width=64, height=64, num_inference_steps=10, guidance_scale=7.0,
                         generator=torch.Generator("cpu").manual_seed(5)).images[0]  # fmt: skip
    served = np.asarray(download_image(sdxl["images"][0]["url"]).convert("RGB"))
    assert np.array_equal(served, np.asarray(expected))


def test_weighted_and_long_prompts_work_on_sdxl(client, sdxl_worker):
    prompts = [{"text": "lighthouse " * 90, "weight": 1}, {"text": "a storm", "weight": 0.3},
               {"text": "fog", "weight": -1}]  # fmt: skip
    body = {"model": "tiny-sdxl", "text_prompts": prompts, "width": 64, "height": 64, "steps": 4}
    job = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]


def test_models_lists_the_registry_with_live_workers(client, worker, sdxl_worker):
    response = client.get("/v1/models")
    assert response.status_code == 200
    listing = response.json()
    assert listing["object"] == "list"
    models = {model["id"]: model for model in listing["data"]}
    assert list(models) == [
        "tiny-sd", "tiny-sdxl", "tiny-sd-inpainting", "tiny-x4-upscaler", "lanczos", "tiny-sd3", "tiny-flux",
    ]  # fmt: skip
    sd, sdxl = models["tiny-sd"], models["tiny-sdxl"]
    assert (sd["family"], sdxl["family"], sd["default"], sdxl["default"]) == ("sd1", "sdxl", True, False)
    assert models["lanczos"]["tasks"] == ["upscale"] and "masking" in sd["tasks"]
    assert (sd["workers"], sdxl["workers"]) == (1, 1)
    assert sd["limits"]["min_pixels"] == 4096 and sd["defaults"]["sampler"] == "K_EULER"
    assert "K_DPMPP_2M_KARRAS" in sd["samplers"] and len(sd["samplers"]) == 19
    assert models["tiny-sd3"]["samplers"] == ["K_EULER", "K_HEUN"]
    assert models["tiny-flux"]["samplers"] == ["K_EULER"]
    flux = models["tiny-flux"]
    assert (flux["family"], flux["limits"]["multiple"], flux["defaults"]["cfg_scale"]) == ("flux", 16, 3.5)


def test_styles_are_listed(client):
    styles = client.get("/v1/styles").json()["data"]
    assert len(styles) == 17 and {"name", "prompt", "negative_prompt"} <= set(styles[0])


def test_defaults_come_from_the_model(client, worker):
    job = client.post("/v1/generate", json={"prompt": "a"}).json()
    request = job["request"]
    assert (job["model"], request["width"], request["height"], request["steps"], request["sampler"]) == (
        "tiny-sd", 64, 64, 20, "K_EULER",
    )  # fmt: skip
    assert request["cfg_scale"] == 7.0
