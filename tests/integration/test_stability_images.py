"""Stability v1's image routes: multipart bodies as its OpenAPI description has them, through the service."""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import API_KEY, ESRGAN, api_settings, serve
from tests.integration.test_image_inputs import BAD_FILES, encoded
from tests.integration.test_image_jobs import INIT, MASK, noise_image, pixels
from tests.integration.test_stability import assert_error

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture
def stability(api_url):
    with httpx.Client(base_url=api_url, headers=AUTH, timeout=120) as client:
        yield client


def png(image: Image.Image) -> tuple[str, bytes, str]:
    return ("image.png", encoded(image, "PNG"), "image/png")


def artifacts(response: httpx.Response) -> list[tuple[int, np.ndarray]]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert list(body) == ["artifacts"]
    found = []
    for artifact in body["artifacts"]:
        assert set(artifact) == {"base64", "seed", "finishReason"} and artifact["finishReason"] == "SUCCESS"
        found.append((artifact["seed"], pixels(Image.open(io.BytesIO(base64.b64decode(artifact["base64"]))))))
    return found


# Stability's published IMAGE_STRENGTH example, field for field (the image is ours, and a seed is added).
IMAGE_STRENGTH = {
    "image_strength": "0.35",
    "init_image_mode": "IMAGE_STRENGTH",
    "text_prompts[0][text]": "A dog space commander",
    "text_prompts[0][weight]": "1",
    "cfg_scale": "7",
    "clip_guidance_preset": "FAST_BLUE",
    "sampler": "K_DPM_2_ANCESTRAL",
    "samples": "3",
    "steps": "20",
    "seed": "90",
}


def test_image_to_image_example_matches_our_route(stability, client, worker):
    response = stability.post(
        "/v1/generation/tiny-sd/image-to-image", data=IMAGE_STRENGTH, files={"init_image": png(INIT)}
    )
    found = artifacts(response)
    assert [seed for seed, _ in found] == [90, 91, 92]
    ours = client.post(
        "/v1/generate",
        json={
            "init_image": base64.b64encode(encoded(INIT, "PNG")).decode(),
            "image_strength": 0.35,
            "text_prompts": [{"text": "A dog space commander", "weight": 1}],
            "sampler": "K_DPM_2_ANCESTRAL",
            "steps": 20,
            "seed": 90,
            "samples": 3,
        },
    ).json()
    from tests.conftest import wait_for_job
    from tests.integration.test_generate import download_image

    job = wait_for_job(client, ours["id"])
    assert np.array_equal(found[0][1], pixels(download_image(job["images"][0]["url"])))


def test_step_schedule_example_equals_the_image_strength_one(stability, worker):
    step_schedule = {key: value for key, value in IMAGE_STRENGTH.items() if key != "image_strength"}
    step_schedule.update(init_image_mode="STEP_SCHEDULE", step_schedule_start="0.65", samples="1")
    by_schedule = artifacts(
        stability.post(
            "/v1/generation/tiny-sd/image-to-image", data=step_schedule, files={"init_image": png(INIT)}
        )
    )
    by_strength = artifacts(
        stability.post(
            "/v1/generation/tiny-sd/image-to-image",
            data={**IMAGE_STRENGTH, "samples": "1"},
            files={"init_image": png(INIT)},
        )
    )
    assert np.array_equal(by_schedule[0][1], by_strength[0][1])


@pytest.mark.parametrize("source", ["MASK_IMAGE_BLACK", "MASK_IMAGE_WHITE", "INIT_IMAGE_ALPHA"])
def test_masking_examples_keep_unmasked_pixels(stability, worker, source):
    data = {key: value for key, value in IMAGE_STRENGTH.items() if "image_" not in key}
    data.update(mask_source=source, samples="1")
    inverted = Image.eval(MASK, lambda value: 255 - value)
    init, files = INIT, {}
    if source == "INIT_IMAGE_ALPHA":
        init = INIT.copy()
        init.putalpha(inverted)
    else:
        files["mask_image"] = png(inverted if source == "MASK_IMAGE_BLACK" else MASK)
    [(_, served)] = artifacts(
        stability.post(
            "/v1/generation/tiny-sd/image-to-image/masking",
            data=data,
            files={"init_image": png(init), **files},
        )
    )
    keep = np.asarray(MASK) == 0
    assert np.array_equal(served[keep], pixels(INIT)[keep])


@pytest.fixture(scope="module")
def esrgan_api(redis_server, s3_server):
    with serve(api_settings(redis_server, s3_server, models=[ESRGAN])) as url:
        yield url


@pytest.mark.parametrize(
    ("data", "size"), [({}, (128, 96)), ({"width": "512"}, (512, 384)), ({"height": "1024"}, (1365, 1024))]
)
def test_upscale_examples_on_a_registered_esrgan_engine(esrgan_api, image_worker, data, size):
    low = noise_image(64, 48, seed=5)
    response = httpx.post(
        esrgan_api + "/v1/generation/esrgan-v1-x2plus/image-to-image/upscale",
        data=data,
        files={"image": png(low)},
        headers={**AUTH, "Accept": "image/png"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png" and response.headers["finish-reason"] == "SUCCESS"
    served = Image.open(io.BytesIO(response.content))
    assert served.size == size
    assert np.array_equal(pixels(served), pixels(low.resize(size, Image.Resampling.LANCZOS)))


@pytest.mark.parametrize(
    ("path", "data", "files", "status", "name", "fragment"),
    [
        ("image-to-image", IMAGE_STRENGTH, {}, 400, "bad_request", "init_image: is required"),
        (
            "image-to-image",
            {**IMAGE_STRENGTH, "text_prompts[0][weight]": "heavy"},
            "init",
            400,
            "invalid_prompts",
            "valid number",
        ),
        (
            "image-to-image",
            {**IMAGE_STRENGTH, "image_strength": "2"},
            "init",
            400,
            "bad_request",
            "image_strength: input should be less than or equal to 1",
        ),
        (
            "image-to-image",
            {**IMAGE_STRENGTH, "colour": "red"},
            "init",
            400,
            "bad_request",
            "Unknown field 'colour'",
        ),
        (
            "image-to-image",
            IMAGE_STRENGTH,
            {"init_image": ("a.gif", BAD_FILES["GIF"][0], "image/gif")},
            400,
            "invalid_mime_type",
            "not a PNG, JPEG or WebP",
        ),
        (
            "image-to-image",
            IMAGE_STRENGTH,
            {"init_image": ("a.png", BAD_FILES["truncated PNG"][0], "image/png")},
            400,
            "bad_request",
            "truncated or corrupt",
        ),
        (
            "image-to-image",
            IMAGE_STRENGTH,
            {"init_image": ("a.png", BAD_FILES["too many bytes"][0], "image/png")},
            400,
            "invalid_file_size",
            "10,485,760",
        ),
        (
            "image-to-image/masking",
            {"mask_source": "MASK_IMAGE_WHITE", "text_prompts[0][text]": "a"},
            "init",
            400,
            "invalid_mask_image",
            "mask_image: is required with mask_source MASK_IMAGE_WHITE",
        ),
        (
            "image-to-image/masking",
            {"mask_source": "MASK_IMAGE_WHITE", "text_prompts[0][text]": "a"},
            {"mask_image": png(MASK.resize((32, 32)))},
            400,
            "invalid_image_dimensions",
            "must be the init image's",
        ),
        (
            "image-to-image/masking",
            {"text_prompts[0][text]": "a"},
            "init",
            400,
            "bad_request",
            "mask_source: is required",
        ),
        (
            "image-to-image/upscale",
            {"width": "256"},
            "image",
            400,
            "invalid_height_or_width",
            "greater than or equal to 512",
        ),
        ("image-to-image/upscale", {"width": "4096"}, "image", 400, "invalid_pixel_count", "4,194,304"),
        (
            "image-to-image/upscale",
            {"width": "512", "height": "512"},
            "image",
            400,
            "invalid_height_or_width",
            "not both",
        ),
        ("image-to-image/upscale", {}, {}, 400, "bad_request", "image: is required"),
    ],
)
def test_bad_multipart_input_gets_stabilitys_names(esrgan_api, path, data, files, status, name, fragment):
    engine = "esrgan-v1-x2plus" if path.endswith("upscale") else "tiny-sd"
    if files == "init":
        files = {"init_image": png(INIT)}
    elif files == "image":
        files = {"image": png(noise_image(64, 48))}
    elif "mask_image" in files:
        files = {"init_image": png(INIT), **files}
    response = httpx.post(
        f"{esrgan_api}/v1/generation/{engine}/{path}",
        data=data,
        files=files or None,
        headers=AUTH,
        timeout=60,
    )
    assert_error(response, status, name, fragment)


def test_a_json_body_on_a_multipart_route_is_refused(stability):
    response = stability.post("/v1/generation/tiny-sd/image-to-image", json={"text_prompts": [{"text": "a"}]})
    assert_error(response, 400, "bad_request", "multipart/form-data")
