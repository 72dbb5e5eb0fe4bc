"""Reused schedulers: a scheduler kept across calls (``SchedulerCache``) gives every call what a
fresh one would, for every sampler, after calls of other step counts, cut short or started late."""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import torch

from worker.diffusion.schedulers import FLOW_SCHEDULERS, SCHEDULERS, SchedulerCache, make_scheduler

#: The embedded tiny model's scheduler config (a Stable Diffusion 1.5-style one).
SD_CONFIG = {
    "_class_name": "PNDMScheduler", "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "beta_start": 0.00085, "num_train_timesteps": 1000, "prediction_type": "epsilon",
    "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1, "timestep_spacing": "leading",
}  # fmt: skip
FLOW_CONFIG = {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}


def denoise(
    scheduler: Any, steps: int, stop_after: int | None = None, begin: int | None = None
) -> torch.Tensor:
    """Run ``scheduler`` as a pipeline call does, with a fixed fake denoiser; return the last sample.
    ``stop_after``: end after that many steps (a cancel, a schedule's end); ``begin``: start at that
    step index, as image-to-image pipelines do (``set_begin_index``)."""
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps
    if begin is not None:
        scheduler.set_begin_index(begin)
        timesteps = timesteps[begin:]
    # The ancestral and SDE samplers add noise: a generator, where ``step`` takes one (as pipelines do).
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    extra = {"generator": torch.Generator().manual_seed(7)} if takes_generator else {}
    sample = torch.linspace(-1, 1, 2 * 4 * 8 * 8).reshape(2, 4, 8, 8) * getattr(
        scheduler, "init_noise_sigma", 1.0
    )
    for index, timestep in enumerate(timesteps):
        scaled = sample
        if hasattr(scheduler, "scale_model_input"):
            scaled = scheduler.scale_model_input(sample, timestep)
        prediction = torch.sin(scaled * 3 + float(timestep) / 100)
        sample = scheduler.step(prediction, timestep, sample, **extra).prev_sample
        if stop_after is not None and index + 1 >= stop_after:
            break
    return sample


@pytest.mark.parametrize(
    ("sampler", "config"),
    [(name, SD_CONFIG) for name in SCHEDULERS] + [(name, FLOW_CONFIG) for name in FLOW_SCHEDULERS],
)
def test_a_reused_scheduler_gives_what_a_fresh_one_gives(sampler, config):
    cache = SchedulerCache(config)
    assert cache.get(sampler) is cache.get(sampler)
    reused = cache.get(sampler)
    denoise(reused, 3)
    denoise(reused, 7, stop_after=2)  # a call cut short: its solver history is left half-filled
    if hasattr(reused, "set_begin_index"):
        denoise(reused, 6, begin=2)  # an image-to-image call, begun late
    for steps in (5, 1):
        expected = denoise(make_scheduler(sampler, config), steps)
        assert torch.equal(denoise(reused, steps), expected), f"{sampler} at {steps} steps"
