"""ControlNet jobs through the service, against diffusers' own ControlNet pipelines, and the
Stability v2beta sketch route."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.conftest import API_KEY, object_folder
from tests.integration.test_generate import download_image
from tests.integration.test_image_jobs import INIT, MASK, b64, noise_image, pixels, run, seeded

PROMPT = "a lighthouse at dusk"
COMMON = {"prompt": PROMPT, "steps": 10, "sampler": "K_EULER", "seed": 31}
CONTROL_ID = "tiny-sd-scribble"


def sketch(width: int = 64, height: int = 64) -> Image.Image:
    image = Image.new("RGB", (width, height), "black")
    ImageDraw.Draw(image).ellipse((8, 8, width - 12, height - 16), outline="white", width=3)
    return image


SKETCH = sketch()


@pytest.fixture(scope="module")
def controlled(tiny_model, models_dir):
    """diffusers' SD ControlNet pipelines (text, image-to-image, inpainting), the embedded ControlNet."""
    from diffusers import (
        ControlNetModel,
        EulerDiscreteScheduler,
        StableDiffusionControlNetImg2ImgPipeline,
        StableDiffusionControlNetInpaintPipeline,
        StableDiffusionControlNetPipeline,
    )

    from worker.embedded.models import ensure_tiny_model

    folder = ensure_tiny_model(models_dir / "tiny-sd-controlnet", "tiny-sd-controlnet")
    text = StableDiffusionControlNetPipeline.from_pretrained(
        tiny_model, controlnet=ControlNetModel.from_pretrained(folder)
    )
    text.scheduler = EulerDiscreteScheduler.from_config(text.scheduler.config)
    pipes = {"text": text}
    for name, cls in (("img2img", StableDiffusionControlNetImg2ImgPipeline),
                      ("inpaint", StableDiffusionControlNetInpaintPipeline)):  # fmt: skip
        pipes[name] = cls(**text.components)
    for pipe in pipes.values():
        pipe.set_progress_bar_config(disable=True)
    return pipes


def reference(pipe, steps: int = 10, seed: int = 31, **arguments) -> np.ndarray:
    image = pipe(PROMPT, num_inference_steps=steps, guidance_scale=7.0, generator=seeded(seed), **arguments)
    return pixels(image.images[0])


def test_controlled_text_to_image_equals_diffusers(client, worker, controlled):
    job, [served] = run(client, control_image=b64(SKETCH), **COMMON)
    request = job["request"]
    assert (request["control_model"], request["control_strength"]) == (CONTROL_ID, 1.0)
    assert (request["control_start"], request["control_end"], request["control_preprocess"]) == (
        0.0,
        1.0,
        "none",
    )
    # The control image went to S3 beside the outputs, like an init image.
    assert request["control_image_key"] == f"{object_folder(client, job['id'])}/inputs/control.png"
    assert (job["images"][0]["width"], job["images"][0]["height"]) == SKETCH.size
    assert np.array_equal(served, reference(controlled["text"], image=SKETCH))
    # The PNG says which ControlNet drew it, and carries no body that would redo it without its sketch.
    info = download_image(job["images"][0]["url"]).info
    assert 'ControlNet 0: "Module: none, Model: tiny-sd-scribble, Weight: 1' in info["parameters"]
    assert "latentq" not in info


def test_strength_and_schedule_share_are_diffusers_arguments(client, worker, controlled):
    wide = sketch(80, 64)
    _, [served] = run(client, control_image=b64(wide), control_model=CONTROL_ID, control_strength=1.7,
                      control_start=0.2, control_end=0.7, **COMMON)  # fmt: skip
    expected = reference(controlled["text"], image=wide, controlnet_conditioning_scale=1.7,
                         control_guidance_start=0.2, control_guidance_end=0.7)  # fmt: skip
    assert np.array_equal(served, expected)


def test_strength_zero_equals_the_uncontrolled_image(client, worker):
    _, [plain] = run(client, **COMMON)
    _, [controlled] = run(client, control_image=b64(SKETCH), **COMMON)
    _, [zero] = run(client, control_image=b64(SKETCH), control_strength=0.0, **COMMON)
    assert not np.array_equal(controlled, plain)  # the ControlNet does something...
    assert np.array_equal(zero, plain)  # ...and at 0 nothing: its residuals are scaled to exact zeros


def test_controlled_image_to_image_equals_diffusers(client, worker, controlled):
    _, [served] = run(client, init_image=b64(INIT), image_strength=0.4, control_image=b64(SKETCH), **COMMON)
    # Our default strength is 1 for every kind of job; diffusers' image-to-image default is 0.8.
    expected = reference(controlled["img2img"], image=INIT, control_image=SKETCH, strength=0.6,
                         controlnet_conditioning_scale=1.0)  # fmt: skip
    assert np.array_equal(served, expected)


def test_controlled_masking_equals_diffusers(client, worker, controlled):
    _, [served] = run(client, init_image=b64(INIT), mask_source="MASK_IMAGE_WHITE", mask_image=b64(MASK),
                      control_image=b64(SKETCH), **COMMON)  # fmt: skip
    generated = controlled["inpaint"](
        PROMPT, image=INIT, mask_image=MASK, control_image=SKETCH, width=64, height=64, strength=1.0,
        num_inference_steps=10, guidance_scale=7.0, generator=seeded(31), controlnet_conditioning_scale=1.0,
    ).images[0]  # fmt: skip
    assert np.array_equal(served, pixels(Image.composite(generated, INIT, MASK)))


def test_canny_preprocessing_conditions_on_the_photos_edges(client, worker, controlled):
    from worker.diffusion.edges import canny_edges

    photo = noise_image(64, 64, seed=5).resize((16, 16)).resize((64, 64), Image.Resampling.NEAREST)
    _, [served] = run(client, control_image=b64(photo), control_preprocess="canny", **COMMON)
    assert np.array_equal(served, reference(controlled["text"], image=canny_edges(photo)))
    _, [raw] = run(client, control_image=b64(photo), **COMMON)
    assert not np.array_equal(served, raw)


def test_controlled_sdxl_equals_diffusers(client, sdxl_worker, tiny_sdxl_model, models_dir):
    from diffusers import ControlNetModel, EulerDiscreteScheduler, StableDiffusionXLControlNetPipeline

    from worker.embedded.models import ensure_tiny_model

    folder = ensure_tiny_model(models_dir / "tiny-sdxl-controlnet", "tiny-sdxl-controlnet")
    pipe = StableDiffusionXLControlNetPipeline.from_pretrained(
        tiny_sdxl_model, controlnet=ControlNetModel.from_pretrained(folder)
    )
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    job, [served] = run(client, model="tiny-sdxl", control_image=b64(SKETCH), control_strength=0.8, **COMMON)
    assert job["request"]["control_model"] == "tiny-sdxl-canny"  # the family's first
    assert np.array_equal(served, reference(pipe, image=SKETCH, controlnet_conditioning_scale=0.8))


def test_controlnets_are_listed(client):
    response = client.get("/v1/controlnets")
    assert response.status_code == 200
    [entry] = [c for c in response.json()["data"] if c["id"] == CONTROL_ID]
    assert entry["family"] == "sd1" and entry["control_type"] == "scribble"
    assert "tiny-sd" in entry["models"] and "tiny-sdxl" not in entry["models"]
    assert "source" not in entry


BAD_REQUESTS = [
    ({"control_image": b64(SKETCH), "control_model": "nope"}, "invalid_control_model", "tiny-sd-scribble"),
    (
        {"control_image": b64(SKETCH), "model": "tiny-sdxl", "control_model": CONTROL_ID},
        "invalid_control_model",
        "for sd1 models",
    ),
    ({"control_strength": 0.5}, "invalid_control_strength", "only used with control_image"),
    ({"control_model": CONTROL_ID}, "invalid_control_model", "only used with control_image"),
    ({"control_image": b64(SKETCH), "control_strength": 2.5}, "invalid_control_strength", "2"),
    (
        {"control_image": b64(SKETCH), "control_start": 0.6, "control_end": 0.5},
        "invalid_control_end",
        "above",
    ),
    ({"control_image": b64(SKETCH), "control_preprocess": "sobel"}, "invalid_control_preprocess", "canny"),
    ({"control_image": "not base64!"}, "invalid_control_image", "base64"),
    ({"control_image": base64.b64encode(b"GIF89a" + bytes(40)).decode()}, "invalid_mime_type", ""),
    ({"control_image": b64(SKETCH), "width": 64}, "invalid_width", "control_image"),
    ({"control_image": b64(sketch(60, 64))}, "invalid_image_dimensions", "multiple of 8"),
    ({"control_image": b64(sketch(72, 64)), "init_image": b64(INIT)}, "invalid_image_dimensions", "init"),
]


@pytest.mark.parametrize(("fields", "name", "says"), BAD_REQUESTS)
def test_bad_control_fields_get_named_errors(client, fields, name, says):
    response = client.post("/v1/generate", json={"prompt": PROMPT, **fields})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["name"] == name and says in error["message"], error


# -- Stability v2beta: control/sketch -------------------------------------------------------------

SKETCH_PATH = "/v2beta/stable-image/control/sketch"


def png(image: Image.Image) -> tuple[str, bytes, str]:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return ("sketch.png", buffer.getvalue(), "image/png")


@pytest.fixture
def stability(api_url):
    with httpx.Client(
        base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=120
    ) as client:
        yield client


def test_sketch_route_answers_bytes_and_json_as_stability_does(stability, worker, controlled):
    form = {"prompt": PROMPT, "seed": "44", "negative_prompt": "blurry"}
    raw = stability.post(SKETCH_PATH, data=form, files={"image": png(SKETCH)}, headers={"Accept": "image/*"})
    assert raw.status_code == 200, raw.text
    assert raw.headers["content-type"] == "image/png" and raw.headers["finish-reason"] == "SUCCESS"
    assert raw.headers["seed"] == "44"
    as_json = stability.post(SKETCH_PATH, data=form, files={"image": png(SKETCH)},
                             headers={"Accept": "application/json"})  # fmt: skip
    assert as_json.status_code == 200, as_json.text
    body = as_json.json()
    assert set(body) == {"image", "finish_reason", "seed"} and (body["finish_reason"], body["seed"]) == (
        "SUCCESS",
        44,
    )
    assert base64.b64decode(body["image"]) == raw.content
    # The model's defaults (tiny-sd: 20 steps, K_EULER) and Stability's default strength, 0.7.
    expected = reference(controlled["text"], steps=20, seed=44, image=SKETCH, negative_prompt="blurry",
                         controlnet_conditioning_scale=0.7)  # fmt: skip
    assert np.array_equal(pixels(Image.open(io.BytesIO(raw.content))), expected)


def test_sketch_route_output_format_and_strength(stability, worker):
    form = {"prompt": PROMPT, "seed": "9", "output_format": "webp", "control_strength": "0.2"}
    response = stability.post(SKETCH_PATH, data=form, files={"image": png(SKETCH)})  # no Accept: bytes
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/webp"
    assert Image.open(io.BytesIO(response.content)).size == SKETCH.size


@pytest.mark.parametrize(
    ("form", "files", "status", "says"),
    [
        ({"prompt": PROMPT}, {}, 400, "image: is required"),
        ({}, {"image": png(SKETCH)}, 400, "prompt"),
        ({"prompt": PROMPT, "control_strength": "1.5"}, {"image": png(SKETCH)}, 400, "control_strength"),
        ({"prompt": PROMPT, "output_format": "gif"}, {"image": png(SKETCH)}, 400, "output_format"),
        ({"prompt": PROMPT, "model": "tiny-sdxl"}, {"image": png(SKETCH)}, 400, "no sketch ControlNet"),
        ({"prompt": PROMPT}, {"image": ("s.png", b"not an image", "image/png")}, 400, "image: "),
        ({"prompt": PROMPT}, {"image": png(sketch(60, 64))}, 400, "image: "),
    ],
)
def test_sketch_route_errors_have_stabilitys_v2_shape(stability, form, files, status, says):
    response = stability.post(SKETCH_PATH, data=form, files=files or None)
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"id", "name", "errors"} and body["name"] == "bad_request"
    assert any(says in message for message in body["errors"]), body


def test_sketch_route_refuses_a_missing_key_in_v2_shape(api_url):
    response = httpx.post(api_url + SKETCH_PATH, data={"prompt": PROMPT}, files={"image": png(SKETCH)})
    assert response.status_code == 401
    assert response.json()["name"] == "unauthorized" and response.json()["errors"]
