"""A corpus of bad images and bad image fields: each gets its documented error; nothing is queued.

The corpus is generated here: decompression bombs, truncated files, other formats, garbage,
oversized uploads, mismatched masks.
"""

from __future__ import annotations

import base64
import io
import zlib

import pytest
from PIL import Image

from api.uploads import MAX_IMAGE_BYTES
from latentq.fair_share import waiting
from latentq.keys import queue_name
from tests.integration.test_image_jobs import INIT, MASK, b64, noise_image


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` and whose data is a few bytes: a bomb's shape."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    data = zlib.compress(b"\0" * 1000)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b"")


PNG = encoded(INIT, "PNG")
BAD_FILES = {
    "bomb, real: 4000x4000 black PNG (about 50 KB)": (encoded(Image.new("RGB", (4000, 4000)), "PNG"),
                                                      "invalid_image_dimensions", "at most 1,048,576"),
    "bomb, header only: 100000x100000": (png_header_only(100_000, 100_000), "invalid_image", "unreadable"),
    "truncated PNG": (PNG[: len(PNG) // 2], "invalid_image", "truncated or corrupt"),
    "truncated JPEG": (encoded(INIT, "JPEG")[:300], "invalid_image", ""),
    "GIF": (encoded(INIT.convert("P"), "GIF"), "invalid_mime_type", "not a PNG, JPEG or WebP"),
    "BMP": (encoded(INIT, "BMP"), "invalid_mime_type", "not a PNG, JPEG or WebP"),
    "text": (b"hello, this is not an image", "invalid_mime_type", ""),
    "empty": (b"", "invalid_mime_type", ""),
    "too many bytes": (PNG + b"\0" * MAX_IMAGE_BYTES, "invalid_file_size", "10,485,760"),
}  # fmt: skip


@pytest.fixture
def nothing_queued(redis):
    queues = [queue_name(model) for model in ("tiny-sd", "lanczos", "tiny-x4-upscaler")]
    before = [waiting(redis, queue) for queue in queues]  # in RQ's queues or held for their turn
    yield
    after = [waiting(redis, queue) for queue in queues]
    assert all(now <= then for now, then in zip(after, before, strict=True))  # none added


def assert_error(response, name: str, field: str, fragment: str = "") -> None:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert (error["name"], error["field"]) == (name, field), error
    assert fragment in error["message"]


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_init_images(client, nothing_queued, case):
    data, name, fragment = BAD_FILES[case]
    response = client.post(
        "/v1/generate", json={"prompt": "a", "init_image": base64.b64encode(data).decode()}
    )
    if name == "invalid_file_size" and response.status_code == 413:
        return  # the whole body went over the JSON limit first: also refused before decoding
    assert_error(response, name, "init_image", fragment)


@pytest.mark.parametrize("case", ["truncated PNG", "GIF", "bomb, real: 4000x4000 black PNG (about 50 KB)"])
def test_bad_images_to_upscale(client, nothing_queued, case):
    data, name, _ = BAD_FILES[case]
    if name == "invalid_image_dimensions":
        data = encoded(Image.new("RGB", (2100, 2100)), "PNG")  # over the upscaler's 4,194,304 pixels
    response = client.post("/v1/upscale", json={"model": "lanczos", "image": base64.b64encode(data).decode()})
    assert_error(response, name, "image")


@pytest.mark.parametrize(
    ("change", "name", "field", "fragment"),
    [
        ({"init_image": "not base64!"}, "invalid_image", "init_image", "not valid base64"),
        ({"init_image": b64(noise_image(60, 64))}, "invalid_image_dimensions", "init_image",
         "width must be a multiple of 8 (got 60) for model 'tiny-sd'"),
        ({"width": 64}, "invalid_width", "width", "not allowed with init_image"),
        ({"mask_source": "MASK_IMAGE_WHITE"}, "invalid_mask_image", "mask_image", "is required with"),
        ({"mask_source": "MASK_IMAGE_WHITE", "mask_image": b64(MASK.resize((32, 32)))},
         "invalid_image_dimensions", "mask_image", "is 32x32; it must be the init image's size, 64x64"),
        ({"mask_source": "INIT_IMAGE_ALPHA"}, "invalid_init_image", "init_image", "no alpha channel"),
        ({"mask_source": "INIT_IMAGE_ALPHA", "init_image": b64(INIT.convert("RGBA")),
          "mask_image": b64(MASK)},
         "invalid_mask_image", "mask_image", "not used with mask_source INIT_IMAGE_ALPHA"),
        ({"mask_source": "MASK_IMAGE_GREY"}, "invalid_mask_source", "mask_source", "'MASK_IMAGE_WHITE'"),
        ({"init_image_mode": "STEP_SCHEDULE", "image_strength": 0.5}, "invalid_image_strength",
         "image_strength", "only used with init_image_mode IMAGE_STRENGTH"),
        ({"step_schedule_start": 0.5}, "invalid_step_schedule_start", "step_schedule_start",
         "only used with init_image_mode STEP_SCHEDULE"),
        ({"init_image_mode": "STEP_SCHEDULE", "step_schedule_start": 0.4, "step_schedule_end": 0.4},
         "invalid_step_schedule_end", "step_schedule_end", "must be below step_schedule_start (0.4)"),
        ({"image_strength": 1.5}, "invalid_image_strength", "image_strength", "less than or equal to 1"),
        ({"model": "lanczos"}, "invalid_model", "model", "does not do image-to-image"),
        ({"init_image": None, "image_strength": 0.5}, "invalid_image_strength", "image_strength",
         "only used with init_image"),
        ({"init_image": None, "mask_image": b64(MASK)}, "invalid_mask_source", "mask_source", "required"),
    ],
)  # fmt: skip
def test_bad_image_fields(client, nothing_queued, change, name, field, fragment):
    body = {
        key: value
        for key, value in {"prompt": "a", "init_image": b64(INIT), **change}.items()
        if value is not None
    }
    assert_error(client.post("/v1/generate", json=body), name, field, fragment)


@pytest.mark.parametrize(
    ("change", "name", "field", "fragment"),
    [
        ({"width": 64, "height": 96}, "invalid_height", "height", "give width or height, not both"),
        ({"width": 16}, "invalid_width", "width", "16x24 is smaller than the image, 32x48"),
        ({"width": 2048}, "invalid_pixel_count", "width", "2048x3072, would exceed 4,194,304 pixels"),
        ({"model": "tiny-sd"}, "invalid_model", "model", "does not do upscale; models that do:"),
        ({"width": "64"}, "invalid_width", "width", "valid integer"),
    ],
)  # fmt: skip
def test_bad_upscale_fields(client, nothing_queued, change, name, field, fragment):
    body = {"model": "lanczos", "image": b64(noise_image(32, 48)), **change}
    assert_error(client.post("/v1/upscale", json=body), name, field, fragment)
