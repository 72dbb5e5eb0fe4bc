"""The invisible watermark through the service: a worker with ``LATENTQ_WATERMARK`` marks each stored
image big enough to carry the mark, and the mark is read back from the PNG the client downloads;
images too small for it are stored exactly as diffusers made them. diffusers' own SDXL watermark
(on whenever invisible-watermark is installed) never applies: the deployment decides."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import API_KEY, api_settings, running_worker, serve, wait_for_job, worker_env
from tests.integration.test_generate import download_image
from tests.integration.test_image_jobs import pixels, seeded
from worker.watermark import carries_mark

MARKED = {"id": "tiny-sd-marked", "source": "embedded:tiny-sd", "family": "sd1",
          "limits": {"min_side": 64, "max_side": 512, "min_pixels": 4096, "max_pixels": 262144},
          "defaults": {"width": 64, "height": 64, "steps": 4, "sampler": "K_EULER"}}  # fmt: skip
BODY = {"model": "tiny-sd-marked", "prompt": "a lighthouse at dusk", "steps": 4, "sampler": "K_EULER",
        "seed": 31}  # fmt: skip


@pytest.fixture(scope="module")
def marking_api(redis_server, s3_server, models_dir, tiny_model, tmp_path_factory):
    """A worker that marks what it stores, and an API that knows its model."""
    env = worker_env(redis_server, s3_server, models_dir, MARKED["id"], models=json.dumps([MARKED]),
                     watermark="true")  # fmt: skip
    log = tmp_path_factory.mktemp("logs") / "watermark-worker.log"
    with (
        running_worker(env, log, MARKED["id"]),
        serve(api_settings(redis_server, s3_server, models=[MARKED])) as url,
        httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120) as client,
    ):
        yield client


def plain_diffusers(tiny_model, side: int) -> Image.Image:
    """Plain diffusers' image of BODY at ``side`` x ``side``."""
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    pipe = AutoPipelineForText2Image.from_pretrained(str(tiny_model))
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe(BODY["prompt"], width=side, height=side, num_inference_steps=BODY["steps"],
                guidance_scale=7.0, generator=seeded(BODY["seed"])).images[0]  # fmt: skip


def generated(client: httpx.Client, side: int) -> Image.Image:
    response = client.post("/v1/generate", json={**BODY, "width": side, "height": side})
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"], timeout_s=120)
    assert job["status"] == "succeeded", job["error"]
    [image] = job["images"]
    return download_image(image["url"])


def test_the_mark_is_read_back_from_the_stored_png(marking_api, tiny_model):
    served = generated(marking_api, 256)
    unmarked = plain_diffusers(tiny_model, 256)
    assert carries_mark(served)
    assert not carries_mark(unmarked)
    difference = np.abs(pixels(served).astype(int) - pixels(unmarked).astype(int))
    assert 0 < difference.mean() < 8  # the same image, marked: a small change to every part


def test_images_too_small_for_the_mark_are_stored_as_made(marking_api, tiny_model):
    np.testing.assert_array_equal(pixels(generated(marking_api, 64)), pixels(plain_diffusers(tiny_model, 64)))


def test_diffusers_own_sdxl_watermark_is_off(tiny_sdxl_model):
    from diffusers import AutoPipelineForText2Image

    from worker.diffusion.pipelines import WarmPipeline

    assert AutoPipelineForText2Image.from_pretrained(str(tiny_sdxl_model)).watermark is not None
    warm = WarmPipeline.load(str(tiny_sdxl_model), device="cpu")
    assert all(getattr(pipe, "watermark", None) is None for pipe in warm.pipes.values())
