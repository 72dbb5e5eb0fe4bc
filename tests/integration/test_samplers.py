"""Every sampler through the service gives exactly what diffusers gives with its scheduler and seed."""

from __future__ import annotations

import numpy as np
import pytest

from latentq.contract import SAMPLERS
from tests.conftest import wait_for_job
from tests.integration.test_generate import download_image

# What each sampler name must mean, written out independently of worker/diffusion/schedulers.py:
# (diffusers scheduler, options given to from_config).
EXPECTED = {
    "DDIM": ("DDIMScheduler", {}),
    "DDPM": ("DDPMScheduler", {}),
    "K_DPMPP_2M": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "K_DPMPP_2S_ANCESTRAL": ("DPMSolverSinglestepScheduler", {"algorithm_type": "sde-dpmsolver++",
                                                              "solver_order": 2, "lower_order_final": True}),
    "K_DPM_2": ("KDPM2DiscreteScheduler", {}),
    "K_DPM_2_ANCESTRAL": ("KDPM2AncestralDiscreteScheduler", {}),
    "K_EULER": ("EulerDiscreteScheduler", {}),
    "K_EULER_ANCESTRAL": ("EulerAncestralDiscreteScheduler", {}),
    "K_HEUN": ("HeunDiscreteScheduler", {}),
    "K_LMS": ("LMSDiscreteScheduler", {}),
    "UNIPC": ("UniPCMultistepScheduler", {}),
    "LCM": ("LCMScheduler", {}),
}  # fmt: skip
for _name in (
    "K_DPMPP_2M",
    "K_DPMPP_2S_ANCESTRAL",
    "K_DPM_2",
    "K_DPM_2_ANCESTRAL",
    "K_EULER",
    "K_HEUN",
    "K_LMS",
):
    _cls, _options = EXPECTED[_name]
    EXPECTED[f"{_name}_KARRAS"] = (_cls, {**_options, "use_karras_sigmas": True})

PROMPT = "a lighthouse at dusk"


@pytest.fixture(scope="module")
def reference_pipe(tiny_model):
    from diffusers import AutoPipelineForText2Image

    pipe = AutoPipelineForText2Image.from_pretrained(tiny_model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def reference(pipe, sampler: str, seed: int, steps: int) -> np.ndarray:
    import diffusers
    import torch

    cls, options = EXPECTED[sampler]
    original = pipe.scheduler
    pipe.scheduler = getattr(diffusers, cls).from_config(original.config, **options)
    try:
        image = pipe(PROMPT, width=64, height=64, num_inference_steps=steps, guidance_scale=7.0,
                     generator=torch.Generator("cpu").manual_seed(seed)).images[0]  # fmt: skip
    finally:
        pipe.scheduler = original
    return np.asarray(image)


def test_every_sampler_has_an_expectation():
    assert set(EXPECTED) == set(SAMPLERS)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_seeded_job_equals_diffusers_for_the_same_scheduler(client, worker, reference_pipe, sampler):
    seed, steps = 1000 + SAMPLERS.index(sampler), 10
    body = {"prompt": PROMPT, "width": 64, "height": 64, "steps": steps, "seed": seed, "sampler": sampler}
    job = wait_for_job(client, client.post("/v1/generate", json=body).json()["id"])
    assert job["status"] == "succeeded", job["error"]
    served = np.asarray(download_image(job["images"][0]["url"]).convert("RGB"))
    assert np.array_equal(served, reference(reference_pipe, sampler, seed, steps))
