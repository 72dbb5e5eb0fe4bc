"""The OpenAI Images API, driven by the official ``openai`` client pointed at the test stack with
``base_url``: generation (URL and inline), models, and errors as the client's typed exceptions."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import API_KEY, wait_for_job
from tests.integration.test_image_jobs import INIT, MASK, b64, noise_image

SD = {"steps": 2, "seed": 7}  # Stable Diffusion's own parameters, as extra body fields
EDIT = {"steps": 4, "seed": 31, "sampler": "K_EULER"}


@pytest.fixture
def client(api_url) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{api_url}/v1", api_key=API_KEY, max_retries=0, timeout=120)


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


def test_images_generate_answers_urls_and_inline_images_with_the_requests_seed(client, worker):
    urls = client.images.generate(model="tiny-sd", prompt="a lighthouse", size="64x64", n=2, extra_body=SD)
    assert len(urls.data) == 2 and urls.created > 0
    assert all(item.revised_prompt == "a lighthouse" and item.b64_json is None for item in urls.data)
    fetched = [httpx.get(item.url).content for item in urls.data]
    assert [png(data).size for data in fetched] == [(64, 64), (64, 64)]
    inline = client.images.generate(model="tiny-sd", prompt="a lighthouse", size="64x64", n=2,
                                    response_format="b64_json", extra_body=SD)  # fmt: skip
    decoded = [base64.b64decode(item.b64_json) for item in inline.data]
    # Same seed, same prompt: the same pixels, whether fetched or inline.
    assert [png(d).tobytes() for d in decoded] == [png(d).tobytes() for d in fetched]
    assert png(decoded[0]).tobytes() != png(decoded[1]).tobytes()  # image i uses seed + i


def test_models_list_and_retrieve(client):
    assert "tiny-sd" in [model.id for model in client.models.list()]
    assert client.models.retrieve("tiny-sd").id == "tiny-sd"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_errors_are_the_clients_typed_exceptions_in_openais_shape(client, api_url):
    with pytest.raises(openai.BadRequestError) as bad_size:
        client.images.generate(model="tiny-sd", prompt="a", size="65x64")
    error = bad_size.value.body
    assert error["type"] == "invalid_request_error" and error["param"] == "size", error
    assert error["code"] == "invalid_width" and "multiple of 8" in error["message"]
    with pytest.raises(openai.BadRequestError) as malformed:
        client.images.generate(model="tiny-sd", prompt="a", size="big")
    assert malformed.value.body["param"] == "size" and malformed.value.body["code"] == "invalid_size"
    with pytest.raises(openai.BadRequestError) as unknown:
        client.images.generate(model="no-such-model", prompt="a")
    assert unknown.value.body["code"] == "invalid_model" and unknown.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as too_many:
        client.images.generate(model="tiny-sd", prompt="a", n=11)
    assert too_many.value.body["param"] == "n" and too_many.value.body["code"] == "invalid_n"
    stranger = openai.OpenAI(base_url=f"{api_url}/v1", api_key="lq_" + "x" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as refused:
        stranger.images.generate(model="tiny-sd", prompt="a")
    assert (
        refused.value.body["type"] == "authentication_error" and refused.value.body["code"] == "unauthorized"
    )
    # A raw request sees the whole shape.
    answer = httpx.post(f"{api_url}/v1/images/generations", json={"prompt": "a", "colour": 1},
                        headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
    assert answer.status_code == 400
    assert set(answer.json()["error"]) == {"message", "type", "param", "code"}


def huge_png_header(side: int = 20_000) -> bytes:
    """A PNG that claims ``side`` x ``side`` pixels and holds none: a decompression bomb's header."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b"")


def png_file(image: Image.Image) -> bytes:
    return base64.b64decode(b64(image))


def ours(client: httpx.Client, **body) -> bytes:
    """The image our own route makes of ``body``."""
    job = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    assert job["status"] == "succeeded", job
    return httpx.get(job["images"][0]["url"]).content


def test_images_edit_is_our_masking_with_a_mask_and_image_to_image_without(client, api_url, worker):
    ours_client = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    # OpenAI's mask: transparent = repaint. Ours, the same mask as white = repaint.
    openai_mask = Image.new("RGBA", MASK.size, (0, 0, 0, 255))
    openai_mask.putalpha(Image.eval(MASK, lambda value: 255 - value))
    edited = client.images.edit(model="tiny-sd", prompt="a lighthouse at dusk", image=png_file(INIT),
                                mask=png_file(openai_mask), response_format="b64_json",
                                extra_body=EDIT)  # fmt: skip
    masked = ours(ours_client, model="tiny-sd", prompt="a lighthouse at dusk", init_image=b64(INIT),
                  mask_source="MASK_IMAGE_WHITE", mask_image=b64(MASK), **EDIT)  # fmt: skip
    assert png(base64.b64decode(edited.data[0].b64_json)).tobytes() == png(masked).tobytes()
    redrawn = client.images.edit(model="tiny-sd", prompt="a lighthouse at dusk", image=png_file(INIT),
                                 response_format="b64_json", extra_body=EDIT)  # fmt: skip
    whole = ours(ours_client, model="tiny-sd", prompt="a lighthouse at dusk", init_image=b64(INIT), **EDIT)
    assert png(base64.b64decode(redrawn.data[0].b64_json)).tobytes() == png(whole).tobytes()
    assert png(whole).size == INIT.size


def test_images_edit_names_what_is_wrong_with_its_files(client):
    with pytest.raises(openai.BadRequestError) as opaque:  # a mask must say what to repaint
        client.images.edit(model="tiny-sd", prompt="a", image=png_file(INIT), mask=png_file(INIT))
    assert opaque.value.body["param"] == "mask" and "alpha" in opaque.value.body["message"]
    small = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    with pytest.raises(openai.BadRequestError) as sized:
        client.images.edit(model="tiny-sd", prompt="a", image=png_file(INIT), mask=png_file(small))
    assert sized.value.body["param"] == "mask" and "64x64" in sized.value.body["message"]
    with pytest.raises(openai.BadRequestError) as not_an_image:
        client.images.edit(model="tiny-sd", prompt="a", image=b"not an image")
    assert not_an_image.value.body["param"] == "image"
    with pytest.raises(openai.BadRequestError) as noisy:
        client.images.edit(model="tiny-sd", prompt="a", image=png_file(noise_image(60, 60)))
    assert noisy.value.body["param"] == "image"


# The client marks create_variation deprecated (OpenAI's newer models have no variations); it works.
@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_images_variation_is_image_to_image_at_its_strength_with_the_empty_prompt_or_a_given_one(
    client, api_url, worker
):
    ours_client = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    prompted = client.images.create_variation(model="tiny-sd", image=png_file(INIT),
                                              response_format="b64_json",
                                              extra_body={"prompt": "a lighthouse", **EDIT})  # fmt: skip
    assert prompted.data[0].revised_prompt == "a lighthouse"
    same = ours(ours_client, model="tiny-sd", prompt="a lighthouse", init_image=b64(INIT),
                image_strength=0.35, **EDIT)  # fmt: skip
    assert png(base64.b64decode(prompted.data[0].b64_json)).tobytes() == png(same).tobytes()
    varied = client.images.create_variation(model="tiny-sd", image=png_file(INIT), n=2, extra_body=EDIT)
    assert [item.revised_prompt for item in varied.data] == ["", ""]
    images = [png(httpx.get(item.url).content) for item in varied.data]
    assert [image.size for image in images] == [INIT.size, INIT.size]
    assert images[0].tobytes() != png(same).tobytes()  # no prompt is not "a lighthouse"
    job = ours_client.get("/v1/jobs", params={"limit": 1}).json()["data"][0]
    assert (
        job["request"]["prompts"] == [{"text": "", "weight": 1.0}]
        and job["request"]["task"] == "image-to-image"
    )


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")
def test_images_variation_names_what_is_wrong(client):
    with pytest.raises(openai.BadRequestError) as missing:
        client.images.create_variation(model="tiny-sd", image=b"not an image")
    assert missing.value.body["param"] == "image"
    anime = {"prompt": "a lighthouse", "style_preset": "anime", **EDIT}
    styled = client.images.create_variation(model="tiny-sd", image=png_file(INIT), extra_body=anime)
    assert styled.data[0].revised_prompt.startswith("anime artwork a lighthouse")  # as drawn
    sized = client.images.create_variation(
        model="tiny-sd", image=png_file(INIT), size="64x64", extra_body=EDIT
    )
    assert len(sized.data) == 1  # the image's own size may be named
    with pytest.raises(openai.BadRequestError) as resized:
        client.images.create_variation(model="tiny-sd", image=png_file(INIT), size="512x512")
    assert resized.value.body["param"] == "size" and "64x64" in resized.value.body["message"]
    with pytest.raises(openai.BadRequestError) as bomb:  # its header claims 400 megapixels
        client.images.create_variation(model="tiny-sd", image=huge_png_header(), size="64x64")
    assert bomb.value.status_code == 400 and bomb.value.body["param"] == "image"
    with pytest.raises(openai.BadRequestError) as strength:
        client.images.create_variation(
            model="tiny-sd", image=png_file(INIT), extra_body={"image_strength": 2}
        )
    assert strength.value.body["param"] == "image_strength"


def test_quality_asks_for_a_share_of_the_models_default_steps_and_steps_wins(client, api_url, worker):
    ours_client = httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60)
    default = ours_client.get("/v1/models/tiny-sd").json()["defaults"]["steps"]

    def steps_of(**fields) -> int:
        client.images.generate(model="tiny-sd", prompt="a lighthouse", size="64x64", **fields)
        return ours_client.get("/v1/jobs", params={"limit": 1}).json()["data"][0]["request"]["steps"]

    assert steps_of(quality="low") == round(default * 0.5)
    assert steps_of(quality="hd") == round(default * 1.5) == steps_of(quality="high")
    assert steps_of(quality="standard") == default == steps_of()
    assert steps_of(quality="high", extra_body={"steps": 3}) == 3
    with pytest.raises(openai.BadRequestError) as unknown:
        client.images.generate(model="tiny-sd", prompt="a", quality="ultra")
    assert unknown.value.body["param"] == "quality" and unknown.value.body["code"] == "invalid_quality"
