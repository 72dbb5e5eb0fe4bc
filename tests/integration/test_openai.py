"""The OpenAI Images API, driven by the official ``openai`` client pointed at the test stack with
``base_url``: generation (URL and inline), models, and errors as the client's typed exceptions."""

from __future__ import annotations

import base64
import io

import httpx
import openai
import pytest
from PIL import Image

from tests.conftest import API_KEY

SD = {"steps": 2, "seed": 7}  # Stable Diffusion's own parameters, as extra body fields


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
    assert too_many.value.body["param"] == "n"
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
