"""The x4 upscaler: each step reported, a stop honoured at the next step, its VAE tiled on CUDA only;
the embedded tiny upscaler on the CPU."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from latentq.contract import JobSpec, WeightedPrompt
from worker.diffusion.upscalers import Upscaler

SPEC = JobSpec(job_id="up", model="m", prompts=[WeightedPrompt(text="", weight=1.0)], width=64, height=64,
               steps=4, cfg_scale=7.0, samples=1, seed=1, sampler="DDIM", task="upscale")  # fmt: skip
INPUTS = {"init": Image.new("RGB", (16, 16), (90, 140, 30))}


@pytest.fixture(scope="module")
def upscaler(tiny_upscaler_model) -> Upscaler:
    return Upscaler.load(str(tiny_upscaler_model), "cpu")


def test_each_step_is_reported_with_its_latents(upscaler):
    steps = []
    [image] = upscaler.generate(
        SPEC, INPUTS, lambda step, total, latents: steps.append((step, total, latents.shape[-1])) and False
    )
    assert image.size == (64, 64)
    assert steps == [(step, 4, 16) for step in range(1, 5)]


def test_a_stop_ends_the_upscale_at_that_step_with_no_image(upscaler):
    seen = []

    def stop_at_two(step, total, latents):
        seen.append(step)
        return step == 2

    assert upscaler.generate(SPEC, INPUTS, stop_at_two) == []
    assert seen == [1, 2]
    assert [image.size for image in upscaler.generate(SPEC, INPUTS)] == [(64, 64)]  # and the next one runs


def test_the_vae_decodes_in_tiles_on_cuda_only(upscaler):
    assert not upscaler.pipe.vae.use_tiling  # on the CPU: whole, as plain diffusers (tests compare)
    Upscaler(upscaler.pipe, torch.device("cuda"))  # no CUDA work: the flag alone
    assert upscaler.pipe.vae.use_tiling
    upscaler.pipe.vae.disable_tiling()
