"""Image files carry the parameters that made them: A1111's text, and a body that reproduces them."""

from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from latentq.contract import JobSpec, WeightedPrompt
from worker.encoding import a1111_sampler, encode_image, parameters_text

SPEC = JobSpec(
    job_id="j", model="tiny-sd", width=64, height=48, steps=20, cfg_scale=7.5, samples=2, seed=42,
    sampler="K_DPMPP_2M_KARRAS", style_preset="anime",
    prompts=[WeightedPrompt(text="a fox", weight=1.0), WeightedPrompt(text="a moon", weight=0.5),
             WeightedPrompt(text="fog", weight=-1.0)],
)  # fmt: skip
IMAGE = Image.new("RGB", (64, 48), (200, 30, 30))


def test_a1111_parameters_text():
    assert parameters_text(SPEC, 43) == (
        "a fox, (a moon:0.5)\n"
        "Negative prompt: fog\n"
        "Steps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 43, Size: 64x48, Model: tiny-sd, "
        "Style preset: anime, Version: latentq 0.1.0"
    )


@pytest.mark.parametrize(
    ("ours", "a1111"), [("K_EULER_ANCESTRAL", "Euler a"), ("K_DPMPP_2S_ANCESTRAL", "DPM++ 2S a"),
                        ("K_LMS_KARRAS", "LMS Karras"), ("UNIPC", "UniPC")],
)  # fmt: skip
def test_sampler_names_are_a1111s(ours, a1111):
    assert a1111_sampler(ours) == a1111


def test_png_carries_parameters_and_a_reproducing_request():
    image = Image.open(io.BytesIO(encode_image(IMAGE, SPEC, 43)))
    assert image.format == "PNG"
    assert image.text["parameters"] == parameters_text(SPEC, 43)
    body = json.loads(image.text["latentq"])
    assert body["seed"] == 43 and body["model"] == "tiny-sd" and body["sampler"] == "K_DPMPP_2M_KARRAS"
    assert body["text_prompts"][2] == {"text": "fog", "weight": -1.0}
    assert "samples" not in body and "style_preset" not in body  # one image; the style is already applied


@pytest.mark.parametrize("level", range(10))
def test_every_png_compress_level_keeps_the_pixels_and_the_parameters(level):
    noisy = Image.frombytes("RGB", (32, 32), bytes((index * 7919) % 251 for index in range(32 * 32 * 3)))
    image = Image.open(io.BytesIO(encode_image(noisy, SPEC, 43, png_level=level)))
    assert image.tobytes() == noisy.tobytes()
    assert image.text["parameters"] == parameters_text(SPEC, 43)


@pytest.mark.parametrize(("fmt", "pil_format"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_carry_parameters_in_exif_user_comment(fmt, pil_format):
    spec = SPEC.model_copy(update={"output_format": fmt})
    image = Image.open(io.BytesIO(encode_image(IMAGE, spec, 42)))
    assert image.format == pil_format and image.size == (64, 48)
    comment = image.getexif().get_ifd(0x8769)[0x9286]
    assert comment == b"UNICODE\0" + parameters_text(spec, 42).encode("utf-16-be")


def test_image_jobs_record_their_task_and_strength_but_no_reproducing_body():
    spec = SPEC.model_copy(update={"task": "image-to-image", "strength": 0.65, "style_preset": None})
    image = Image.open(io.BytesIO(encode_image(IMAGE, spec, 43)))
    assert "Denoising strength: 0.65, Task: image-to-image" in image.text["parameters"]
    assert "latentq" not in image.text
