"""What a pipeline call is given for its steps: one seeded generator per image, and the step-end
callback that reports each step and stops the call when asked."""

from __future__ import annotations

from typing import Any

import torch

from latentq.contract import JobSpec
from worker.context import OnStep


def generators_for(spec: JobSpec) -> Any:
    """One ``torch.Generator("cpu")`` per image, seeded seed + i; a lone one (not a list) for one image,
    so a single image matches plain diffusers."""
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in spec.image_seeds()]
    return generators[0] if len(generators) == 1 else generators


class StopSampling(Exception):
    """Raised from the step callback when every job of the call asked to stop (canceled, or its
    time limit passed): the call ends at once, without decoding latents no one wants."""


def step_callback(stop_at: int | None, on_step: OnStep | None) -> Any:
    """Return a diffusers step-end callback that reports each step to ``on_step`` and ends denoising
    after ``stop_at`` loop iterations (a step schedule's end: diffusers skips the remaining steps
    and decodes the latents reached), and raises ``StopSampling`` when ``on_step`` asks to stop."""

    def callback(pipe: Any, index: int, _timestep: Any, tensors: dict) -> dict:
        if stop_at is not None and index + 1 >= stop_at:
            pipe._interrupt = True
        total = getattr(pipe, "num_timesteps", 0) or index + 1
        if on_step is not None and on_step(index + 1, total, tensors.get("latents")):
            raise StopSampling
        return tensors

    return callback
