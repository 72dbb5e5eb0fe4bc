"""The pipeline wrapper: loads a diffusers text-to-image pipeline and runs one job's sampling.

With ``prompts`` and ``schedulers`` beside it, the only modules that touch torch and diffusers.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from diffusers import AutoPipelineForText2Image
from PIL.Image import Image

from latentq.contract import JobSpec, WeightedPrompt
from worker.prompts import prompt_arguments
from worker.schedulers import make_scheduler

log = logging.getLogger("latentq.worker")


def resolve_device(device: str) -> torch.device:
    """Return the torch device for a setting of ``auto``, ``cuda`` or ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


class TextToImage:
    """A warm text-to-image pipeline; ``generate`` runs one job's sampling."""

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe = pipe
        self.device = device
        # Kept from load time: every job builds its scheduler from the model's own config.
        self.scheduler_config = pipe.scheduler.config

    @classmethod
    def load(cls, model: str, device: str = "auto") -> TextToImage:
        """Load ``model`` (a folder or hub id): fp16 on CUDA, fp32 on CPU."""
        target = resolve_device(device)
        dtype = torch.float16 if target.type == "cuda" else torch.float32
        started = time.perf_counter()
        pipe = AutoPipelineForText2Image.from_pretrained(model, torch_dtype=dtype)
        pipe = pipe.to(target)
        pipe.set_progress_bar_config(disable=True)
        log.info("loaded %s (%s) on %s %s in %.1f s", model, type(pipe).__name__, target, dtype,
                 time.perf_counter() - started)  # fmt: skip
        return cls(pipe, target)

    def generate(self, spec: JobSpec) -> list[Image]:
        """Run sampling for ``spec``; image i uses ``torch.Generator("cpu").manual_seed(seed + i)``."""
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in spec.image_seeds()]
        self.pipe.scheduler = make_scheduler(spec.sampler, self.scheduler_config)
        with torch.inference_mode():
            result = self.pipe(
                **prompt_arguments(self.pipe, spec.prompts),
                width=spec.width,
                height=spec.height,
                num_inference_steps=spec.steps,
                guidance_scale=spec.cfg_scale,
                num_images_per_prompt=spec.samples,
                # A lone generator, not a list of one, so a single image matches plain diffusers.
                generator=generators[0] if len(generators) == 1 else generators,
                output_type="pil",
            )
        return list(result.images)

    def warm_up(self) -> float:
        """Run one small generation so the first job is not slow; return its seconds."""
        started = time.perf_counter()
        spec = JobSpec(
            job_id="warm-up", model="warm-up", prompts=[WeightedPrompt(text="warm-up", weight=1.0)],
            width=64, height=64,
            steps=2, cfg_scale=7.0, samples=1, seed=1, sampler="K_EULER",
        )  # fmt: skip
        self.generate(spec)
        return time.perf_counter() - started
