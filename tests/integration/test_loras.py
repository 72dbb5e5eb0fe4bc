"""LoRA adapters per request: through the service, an adapter's image is what plain diffusers draws
with the same adapter loaded the same way, pixel for pixel; no adapters (or weight 0) is the base."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import wait_for_job
from tests.integration.test_generate import download_image

PROMPT = "a lighthouse at dusk"
BODY = {"prompt": PROMPT, "width": 64, "height": 64, "steps": 6, "seed": 4242, "sampler": "K_EULER"}


@pytest.fixture(scope="module")
def reference_pipe(tiny_model, models_dir):
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    from worker.embedded.loras import LORA_WEIGHT_NAME, ensure_tiny_lora

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    # The worker builds the same bytes in its own folder: a second build here proves determinism too.
    folder = ensure_tiny_lora(models_dir / "reference-lora", "tiny-sd-lora")
    pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, adapter_name="tiny")
    return pipe


def reference(pipe, weight: float | None) -> np.ndarray:
    """Plain diffusers' image of BODY: with the adapter at ``weight``, or without adapters (None)."""
    import torch

    if weight is None:
        pipe.disable_lora()
    else:
        pipe.enable_lora()
        pipe.set_adapters(["tiny"], [weight])
    image = pipe(PROMPT, width=64, height=64, num_inference_steps=BODY["steps"], guidance_scale=7.0,
                 generator=torch.Generator("cpu").manual_seed(BODY["seed"])).images[0]  # fmt: skip
    return np.asarray(image)


def served(client, **extra) -> np.ndarray:
    job = wait_for_job(client, client.post("/v1/generate", json={**BODY, **extra}).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return np.asarray(download_image(job["images"][0]["url"]).convert("RGB"))


def test_adapter_job_equals_diffusers_with_the_adapter_then_base_is_exact(client, worker, reference_pipe):
    base = reference(reference_pipe, None)
    with_lora = served(client, loras=[{"id": "tiny-sd-lora", "weight": 0.8}])
    assert np.array_equal(with_lora, reference(reference_pipe, 0.8))
    assert not np.array_equal(with_lora, base)  # the adapter changes the image
    # A request without adapters right after one with: exactly the base model's image.
    assert np.array_equal(served(client), base)
    assert np.array_equal(served(client, loras=[{"id": "tiny-sd-lora"}]), reference(reference_pipe, 1.0))


def test_weight_zero_is_the_base_image(client, worker, reference_pipe):
    assert np.array_equal(served(client, loras=[{"id": "tiny-sd-lora", "weight": 0.0}]),
                          reference(reference_pipe, None))  # fmt: skip


@pytest.mark.parametrize(
    ("loras", "says"),
    [
        ([{"id": "no-such-lora"}], "unknown"),
        ([{"id": "tiny-sdxl-lora"}], "made for tiny-sdxl"),
        ([{"id": "tiny-sd-lora"}, {"id": "tiny-sd-lora"}], "named twice"),
        ([{"id": "tiny-sd-lora", "weight": 9}], "loras.0.weight"),
        ([{"id": "tiny-sd-lora"}] * 5, "loras"),
    ],
)
def test_invalid_lora_is_refused_naming_the_valid_ones(client, loras, says):
    response = client.post("/v1/generate", json={**BODY, "loras": loras})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["name"] == "invalid_lora"
    assert says in error["message"]
    if says in ("unknown", "made for tiny-sdxl"):
        assert "adapters for model 'tiny-sd': tiny-sd-lora" in error["message"]


def test_loras_are_listed_with_family_models_and_trigger_words(client):
    listed = {lora["id"]: lora for lora in client.get("/v1/loras").json()["data"]}
    assert listed["tiny-sd-lora"] == {
        "id": "tiny-sd-lora", "object": "lora", "name": "Embedded tiny SD 1.x LoRA",
        "description": listed["tiny-sd-lora"]["description"], "family": "sd1", "models": ["tiny-sd"],
        "default_weight": 1.0, "trigger_words": ["tinystyle"],
    }  # fmt: skip
    assert listed["tiny-sdxl-lora"]["models"] == ["tiny-sdxl"]


def test_loras_need_an_api_key(api_url):
    import httpx

    assert httpx.get(f"{api_url}/v1/loras").status_code == 401


def test_openai_and_stability_routes_take_loras(client, worker, reference_pipe):
    lora = [{"id": "tiny-sd-lora", "weight": 0.8}]
    answer = client.post("/v1/images/generations", json={
        "prompt": PROMPT, "size": "64x64", "steps": BODY["steps"], "seed": BODY["seed"], "sampler": "K_EULER",
        "cfg_scale": 7.0, "response_format": "b64_json", "loras": lora,
    })  # fmt: skip
    assert answer.status_code == 200, answer.text
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(answer.json()["data"][0]["b64_json"]))).convert("RGB")
    assert np.array_equal(np.asarray(image), reference(reference_pipe, 0.8))
    refused = client.post("/v1/generation/tiny-sd/text-to-image", json={
        "text_prompts": [{"text": PROMPT}], "width": 128, "height": 128, "loras": [{"id": "nope"}],
    })  # fmt: skip
    assert refused.status_code == 400 and "nope" in refused.json()["message"]


def test_sdxl_adapter_job_equals_diffusers_with_the_adapter(client, sdxl_worker, tiny_sdxl_model, models_dir):
    import torch
    from diffusers import AutoPipelineForText2Image

    from worker.embedded.loras import LORA_WEIGHT_NAME, ensure_tiny_lora

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_sdxl_model)
    pipe.set_progress_bar_config(disable=True)
    folder = ensure_tiny_lora(models_dir / "reference-sdxl-lora", "tiny-sdxl-lora")
    pipe.load_lora_weights(str(folder), weight_name=LORA_WEIGHT_NAME, adapter_name="tiny")
    pipe.set_adapters(["tiny"], [0.7])
    expected = pipe(PROMPT, width=64, height=64, num_inference_steps=BODY["steps"], guidance_scale=7.0,
                    generator=torch.Generator("cpu").manual_seed(BODY["seed"])).images[0]  # fmt: skip
    image = served(client, model="tiny-sdxl", loras=[{"id": "tiny-sdxl-lora", "weight": 0.7}])
    assert np.array_equal(image, np.asarray(expected))
    pipe.disable_lora()
    base = pipe(PROMPT, width=64, height=64, num_inference_steps=BODY["steps"], guidance_scale=7.0,
                generator=torch.Generator("cpu").manual_seed(BODY["seed"])).images[0]  # fmt: skip
    assert np.array_equal(served(client, model="tiny-sdxl"), np.asarray(base))


def test_stability_multipart_image_to_image_takes_loras_as_form_fields(client, worker):
    import base64

    from tests.integration.test_image_inputs import encoded
    from tests.integration.test_image_jobs import INIT, pixels
    from tests.integration.test_stability_images import artifacts, png

    form = {"text_prompts[0][text]": PROMPT, "image_strength": "0.35", "steps": "10", "seed": "77",
            "sampler": "K_EULER", "loras[0][id]": "tiny-sd-lora", "loras[0][weight]": "0.6"}  # fmt: skip
    found = artifacts(client.post("/v1/generation/tiny-sd/image-to-image", data=form,
                                  files={"init_image": png(INIT)}, timeout=60))  # fmt: skip
    plain = artifacts(client.post("/v1/generation/tiny-sd/image-to-image",
                                  data={k: v for k, v in form.items() if "loras" not in k},
                                  files={"init_image": png(INIT)}, timeout=60))  # fmt: skip
    body = {"init_image": base64.b64encode(encoded(INIT, "PNG")).decode(), "image_strength": 0.35,
            "prompt": PROMPT, "steps": 10, "seed": 77, "sampler": "K_EULER",
            "loras": [{"id": "tiny-sd-lora", "weight": 0.6}]}  # fmt: skip
    job = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    assert np.array_equal(found[0][1], pixels(download_image(job["images"][0]["url"])))
    assert not np.array_equal(found[0][1], plain[0][1])  # the adapter reached the image-to-image pipeline
