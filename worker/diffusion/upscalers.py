"""The upscalers: a diffusion x4 upscaler (diffusers' ``StableDiffusionUpscalePipeline``) and a
Lanczos resampler that needs no weights."""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from diffusers import DiffusionPipeline
from PIL import Image as PILImage
from PIL.Image import Image

from latentq.contract import JobKind, JobSpec, WeightedPrompt
from latentq.models import MAX_UPSCALE_PIXELS
from worker.context import OnStep
from worker.diffusion.pipelines import generators_for, load_pretrained
from worker.diffusion.prompts import prompt_arguments
from worker.diffusion.schedulers import make_scheduler
from worker.safety import SafetyGate


class Upscaler:
    """A diffusion upscaler (diffusers' ``StableDiffusionUpscalePipeline``, x4)."""

    #: The model's scale factor.
    FACTOR = 4
    #: The model's safety gate (set by the worker's start-up); None: its images are not checked.
    safety: SafetyGate | None = None

    def __init__(self, pipe: Any, device: torch.device) -> None:
        self.pipe = pipe
        self.device = device
        self.scheduler_config = pipe.scheduler.config

    @classmethod
    def load(cls, model: str, device: str = "auto") -> Upscaler:
        """Load the upscaler ``model``: fp16 on CUDA, fp32 on CPU."""
        return cls(*load_pretrained(DiffusionPipeline, model, device))

    def generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None = None) -> list[Image]:
        """Upscale the init image x4 (shrunk first if x4 would pass the output limit), then resample
        to the requested size."""
        low = inputs["init"]
        shrink = min(1.0, math.sqrt(MAX_UPSCALE_PIXELS / (self.FACTOR**2 * low.width * low.height)))
        # The upscaler's UNet wants sides in multiples of 8.
        size = (max(8, round(low.width * shrink / 8) * 8), max(8, round(low.height * shrink / 8) * 8))
        if size != low.size:
            low = low.resize(size, PILImage.Resampling.LANCZOS)
        self.pipe.scheduler = make_scheduler(spec.sampler, self.scheduler_config)
        with torch.inference_mode():
            image = self.pipe(
                **prompt_arguments(self.pipe, spec.prompts), image=low, num_inference_steps=spec.steps,
                guidance_scale=spec.cfg_scale, generator=generators_for(spec), output_type="pil",
            ).images[0]  # fmt: skip
        return [resample(image, (spec.width, spec.height))]

    def warm_up(self, task: JobKind = "upscale") -> float:
        """Run one small upscale so the first job is not slow; return its seconds."""
        started = time.perf_counter()
        spec = JobSpec(
            job_id="warm-up", model="warm-up", prompts=[WeightedPrompt(text="", weight=1.0)], width=64,
            height=64, steps=2, cfg_scale=7.0, samples=1, seed=1, sampler="DDIM", task="upscale",
        )  # fmt: skip
        self.generate(spec, {"init": PILImage.new("RGB", (16, 16))})
        return time.perf_counter() - started


class Resampler:
    """The non-diffusion upscaler: Lanczos resampling, no weights, no GPU."""

    #: The model's safety gate (set by the worker's start-up); None: its images are not checked.
    safety: SafetyGate | None = None

    def generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None = None) -> list[Image]:
        """Resample the init image to the requested size."""
        return [resample(inputs["init"], (spec.width, spec.height))]

    def warm_up(self, task: JobKind = "upscale") -> float:
        """Nothing to warm up."""
        return 0.0


def resample(image: Image, size: tuple[int, int]) -> Image:
    """Return ``image`` at ``size`` (Lanczos), or itself when it already is."""
    return image if image.size == size else image.resize(size, PILImage.Resampling.LANCZOS)
