"""Image-to-image, masking and upscaling through the service, against diffusers' own output."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import object_folder, wait_for_job
from tests.integration.test_generate import download_image

PROMPT = "a lighthouse at dusk"
COMMON = {"prompt": PROMPT, "steps": 10, "sampler": "K_EULER", "seed": 31}


def noise_image(width: int, height: int, seed: int = 0, mode: str = "RGB") -> Image.Image:
    channels = len(mode)
    pixels = np.random.RandomState(seed).randint(0, 256, (height, width, channels), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(), mode)


def b64(image: Image.Image, fmt: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return base64.b64encode(buffer.getvalue()).decode()


INIT = noise_image(64, 64)
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 8, 48, 40))
MASK.paste(128, (0, 48, 64, 64))  # grey: half-strength repaint


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(int)


def run(client, path: str = "/v1/generate", **body) -> tuple[dict, list[np.ndarray]]:
    response = client.post(path, json=body)
    assert response.status_code == 202, response.text
    job = wait_for_job(client, response.json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job, [pixels(download_image(image["url"])) for image in job["images"]]


@pytest.fixture(scope="module")
def sd(tiny_model):
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, EulerDiscreteScheduler

    img2img = AutoPipelineForImage2Image.from_pretrained(tiny_model)
    img2img.scheduler = EulerDiscreteScheduler.from_config(img2img.scheduler.config)
    img2img.set_progress_bar_config(disable=True)
    inpaint = AutoPipelineForInpainting.from_pipe(img2img)
    inpaint.set_progress_bar_config(disable=True)
    return img2img, inpaint


def seeded(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(seed)


def test_image_to_image_equals_diffusers_and_takes_the_init_size(client, worker, sd):
    init = noise_image(72, 64)
    job, [served] = run(client, init_image=b64(init), image_strength=0.4, **COMMON)
    assert (job["images"][0]["width"], job["images"][0]["height"]) == (72, 64)
    assert job["request"]["task"] == "image-to-image" and job["request"]["strength"] == pytest.approx(0.6)
    # The input went to S3 beside the outputs under a server-made key, not through Redis.
    assert job["request"]["init_image_key"] == f"{object_folder(client, job['id'])}/inputs/init.png"
    assert "init_image" not in job["request"]
    expected = sd[0](PROMPT, image=init, strength=0.6, num_inference_steps=10, guidance_scale=7.0,
                     generator=seeded(31)).images[0]  # fmt: skip
    assert np.array_equal(served, pixels(expected))


def test_step_schedule_start_is_one_minus_image_strength(client, worker):
    _, [by_strength] = run(client, init_image=b64(INIT), **COMMON)  # default image_strength 0.35
    _, [by_schedule] = run(client, init_image=b64(INIT), init_image_mode="STEP_SCHEDULE",
                           step_schedule_start=0.65, **COMMON)  # fmt: skip
    assert np.array_equal(by_strength, by_schedule)


def test_step_schedule_end_stops_denoising_early(client, worker, sd):
    _, [served] = run(client, init_image=b64(INIT), init_image_mode="STEP_SCHEDULE", step_schedule_start=0.8,
                      step_schedule_end=0.3, **COMMON)  # fmt: skip

    def stop_after_five(pipe, index, timestep, tensors):  # 8 steps run, the last 3 skipped
        pipe._interrupt = index + 1 >= 5
        return tensors

    expected = sd[0](PROMPT, image=INIT, strength=0.8, num_inference_steps=10, guidance_scale=7.0,
                     generator=seeded(31), callback_on_step_end=stop_after_five).images[0]  # fmt: skip
    assert np.array_equal(served, pixels(expected))


def test_strength_zero_returns_the_init_image(client, worker):
    _, images = run(client, init_image=b64(INIT), image_strength=1.0, samples=2, **COMMON)
    assert all(np.array_equal(image, pixels(INIT)) for image in images)


def inpaint_reference(pipe, init, mask, **options) -> np.ndarray:
    generated = pipe(
        PROMPT, image=init, mask_image=mask, width=init.width, height=init.height, strength=1.0,
        num_inference_steps=10, guidance_scale=7.0, generator=seeded(31), **options,
    ).images[0]  # fmt: skip
    return pixels(Image.composite(generated, init, mask))


def test_masking_equals_diffusers_inpainting_and_keeps_unmasked_pixels(client, worker, sd):
    _, [served] = run(
        client, init_image=b64(INIT), mask_source="MASK_IMAGE_WHITE", mask_image=b64(MASK), **COMMON
    )
    keep = np.asarray(MASK) == 0
    assert np.array_equal(served[keep], pixels(INIT)[keep])  # masked-out pixels unchanged, exactly
    assert not np.array_equal(served[~keep], pixels(INIT)[~keep])
    assert np.array_equal(served, inpaint_reference(sd[1], INIT, MASK))


def test_mask_sources_agree(client, worker):
    white = run(client, init_image=b64(INIT), mask_source="MASK_IMAGE_WHITE", mask_image=b64(MASK), **COMMON)[
        1
    ]
    inverted = Image.eval(MASK, lambda value: 255 - value)
    black = run(
        client, init_image=b64(INIT), mask_source="MASK_IMAGE_BLACK", mask_image=b64(inverted), **COMMON
    )[1]
    with_alpha = INIT.copy()
    with_alpha.putalpha(inverted)  # transparent = repaint
    alpha = run(client, init_image=b64(with_alpha), mask_source="INIT_IMAGE_ALPHA", **COMMON)[1]
    assert np.array_equal(white[0], black[0]) and np.array_equal(white[0], alpha[0])


def test_dedicated_inpainting_checkpoint(client, image_worker, tiny_inpainting_model):
    from diffusers import EulerDiscreteScheduler, StableDiffusionInpaintPipeline

    body = {**COMMON, "model": "tiny-sd-inpainting", "init_image": b64(INIT),
            "mask_source": "MASK_IMAGE_WHITE", "mask_image": b64(MASK)}  # fmt: skip
    _, [served] = run(client, **body)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(tiny_inpainting_model)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    assert pipe.unet.config.in_channels == 9
    assert np.array_equal(served, inpaint_reference(pipe, INIT, MASK))
    refused = client.post("/v1/generate", json={**COMMON, "model": "tiny-sd-inpainting"}).json()["error"]
    assert refused["name"] == "invalid_model" and "does not do text-to-image" in refused["message"]


def test_diffusion_upscale_equals_diffusers(client, image_worker, tiny_upscaler_model):
    from diffusers import StableDiffusionUpscalePipeline

    low = noise_image(32, 48, seed=3)
    job, [served] = run(client, "/v1/upscale", model="tiny-x4-upscaler", image=b64(low), width=128)
    assert (job["images"][0]["width"], job["images"][0]["height"]) == (128, 192)
    pipe = StableDiffusionUpscalePipeline.from_pretrained(tiny_upscaler_model)
    pipe.set_progress_bar_config(disable=True)
    seed = job["images"][0]["seed"]
    expected = pipe("", image=low, num_inference_steps=10, guidance_scale=9.0, generator=seeded(seed)).images[
        0
    ]
    assert np.array_equal(served, pixels(expected))


@pytest.mark.parametrize(
    ("size", "expected"), [({}, (64, 96)), ({"height": 120}, (80, 120)), ({"width": 50}, (50, 75))]
)
def test_resampler_upscale(client, image_worker, size, expected):
    low = noise_image(32, 48, seed=4)
    _, [served] = run(client, "/v1/upscale", model="lanczos", image=b64(low), **size)
    assert served.shape[1::-1] == expected
    assert np.array_equal(served, pixels(low.resize(expected, Image.Resampling.LANCZOS)))
