"""Weighted, long and styled prompts, and output formats, through the service."""

from __future__ import annotations

import io
import json

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from api.presets import style_presets
from tests.conftest import wait_for_job
from tests.integration.test_generate import download_image

BASE = {"width": 64, "height": 64, "steps": 10, "sampler": "K_EULER"}


@pytest.fixture(scope="module")
def pipe(tiny_model):
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(client, **body) -> tuple[dict, np.ndarray]:
    job = wait_for_job(client, client.post("/v1/generate", json={**BASE, **body}).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    return job, np.asarray(download_image(job["images"][0]["url"]).convert("RGB"))


def render(pipe, seed: int, **conditioning) -> np.ndarray:
    image = pipe(**conditioning, width=64, height=64, num_inference_steps=10, guidance_scale=7.0,
                 generator=torch.Generator("cpu").manual_seed(seed)).images[0]  # fmt: skip
    return np.asarray(image)


def embed(pipe, text: str) -> torch.Tensor:
    """diffusers' own encoding of ``text`` (one 77-token window)."""
    with torch.inference_mode():
        return pipe.encode_prompt(text, "cpu", 1, False)[0]


def test_text_prompts_with_weights_1_and_minus_1_equal_prompt_and_negative_prompt(client, worker, pipe):
    prompts = [{"text": "a lighthouse", "weight": 1}, {"text": "fog", "weight": -1}]
    _, served = run(client, text_prompts=prompts, seed=11)
    assert np.array_equal(served, render(pipe, 11, prompt="a lighthouse", negative_prompt="fog"))


def test_positive_prompts_blend_by_weight(client, worker, pipe):
    prompts = [{"text": "a lighthouse", "weight": 1}, {"text": "a storm", "weight": 0.5},
               {"text": "fog", "weight": -2}]  # fmt: skip
    job, served = run(client, text_prompts=prompts, seed=12)
    blended = embed(pipe, "a lighthouse") * (1 / 1.5) + embed(pipe, "a storm") * (0.5 / 1.5)
    expected = render(pipe, 12, prompt_embeds=blended, negative_prompt_embeds=embed(pipe, "fog"))
    assert np.abs(served.astype(int) - expected.astype(int)).max() <= 1
    assert job["request"]["prompts"] == [{"text": p["text"], "weight": p["weight"]} for p in prompts]


def windows(pipe, text: str, count: int) -> torch.Tensor:
    """The documented chunking, written out: 75-token windows wrapped in BOS/EOS, padded to 77."""
    tokenizer = pipe.tokenizer
    ids = tokenizer(text, add_special_tokens=False).input_ids
    rows = []
    for index in range(count):
        chunk = [tokenizer.bos_token_id, *ids[75 * index : 75 * (index + 1)], tokenizer.eos_token_id]
        rows.append(chunk + [tokenizer.pad_token_id] * (77 - len(chunk)))
    with torch.inference_mode():
        return pipe.text_encoder(torch.tensor(rows))[0].reshape(1, -1, 32)


def test_long_prompts_are_chunked_not_truncated(client, worker, pipe):
    head = "lighthouse " * 80
    assert len(pipe.tokenizer(head).input_ids) > 77
    _, storm = run(client, prompt=head + "storm", seed=13)
    _, forest = run(client, prompt=head + "forest", seed=13)
    assert not np.array_equal(storm, forest)  # words past token 77 still count
    expected = render(pipe, 13, prompt_embeds=windows(pipe, head + "storm", 2),
                      negative_prompt_embeds=windows(pipe, "", 2))  # fmt: skip
    assert np.abs(storm.astype(int) - expected.astype(int)).max() <= 1


def test_style_preset_rewrites_the_prompt_as_documented(client, worker, pipe):
    job, served = run(client, prompt="a fox", negative_prompt="fog", style_preset="anime", seed=14)
    preset = style_presets()["anime"]
    styled = preset["prompt"].replace("{prompt}", "a fox")
    negative = f"fog, {preset['negative_prompt']}"
    assert job["request"]["prompts"] == [{"text": styled, "weight": 1.0}, {"text": negative, "weight": -1.0}]
    assert job["request"]["style_preset"] == "anime"
    assert np.array_equal(served, render(pipe, 14, prompt=styled, negative_prompt=negative))


@pytest.mark.parametrize(("fmt", "content_type"), [("jpeg", "image/jpeg"), ("webp", "image/webp")])
def test_lossy_output_formats(client, worker, fmt, content_type):
    body = {**BASE, "prompt": "a", "seed": 3, "output_format": fmt}
    job = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    [image] = job["images"]
    assert image["content_type"] == content_type
    assert httpx.URL(image["url"]).path.endswith(f"/0.{fmt}")
    response = httpx.get(image["url"], timeout=30)
    assert response.headers["content-type"] == content_type
    decoded = Image.open(io.BytesIO(response.content))
    assert decoded.format == fmt.upper() and decoded.size == (64, 64)
    assert b"Seed: 3" in decoded.getexif().get_ifd(0x8769)[0x9286].replace(b"\0", b"")


def test_png_reproduces_itself_from_its_own_parameters(client, worker):
    job, _ = run(client, prompt="a lighthouse", negative_prompt="fog", samples=2, seed=20, cfg_scale=5)
    second_image = Image.open(io.BytesIO(httpx.get(job["images"][1]["url"], timeout=30).content))
    assert second_image.text["parameters"].startswith("a lighthouse\nNegative prompt: fog\nSteps: 10, ")
    assert "Seed: 21, Size: 64x64, Model: tiny-sd" in second_image.text["parameters"]
    again, pixels = run(client, **json.loads(second_image.text["latentq"]))
    assert again["images"][0]["seed"] == 21
    # Made in a batch of two, redrawn alone: CPU kernels may round differently per batch size (about
    # 1e-6 here, plain diffusers alike), which can move a pixel by one level, never more.
    difference = np.abs(pixels.astype(int) - np.asarray(second_image.convert("RGB")).astype(int))
    assert difference.max() <= 1 and difference.mean() < 0.01
    # Made alone and redrawn alone: pixel-identical.
    alone = Image.open(io.BytesIO(httpx.get(again["images"][0]["url"], timeout=30).content))
    _, redrawn = run(client, **json.loads(alone.text["latentq"]))
    assert np.array_equal(redrawn, np.asarray(alone.convert("RGB")))
