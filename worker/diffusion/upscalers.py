"""The upscalers: a diffusion x4 upscaler (diffusers' ``StableDiffusionUpscalePipeline``) and a
Lanczos resampler that needs no weights.

On CUDA the x4 upscaler's UNet and text encoder run fp16; its VAE is fp16 too, but the pipeline
casts it to fp32 for each decode (its config's ``force_upcast``: the x4 VAE overflows in fp16),
and the decode of a 2048x2048 output would take 15-25 GB whole, so it decodes in tiles (the VAE's
``sample_size`` square, blended). On CPU (fp32) it decodes whole, as plain diffusers does.
"""

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
from worker.diffusion.loading import load_pretrained
from worker.diffusion.prompts import prompt_arguments
from worker.diffusion.schedulers import make_scheduler
from worker.diffusion.steps import StopSampling, generators_for
from worker.diffusion.vae import keeps_vae_dtype, set_tiling
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
        set_tiling(pipe.vae, device.type == "cuda")  # tiles only outputs larger than one tile

    @classmethod
    def load(cls, model: str, device: str = "auto") -> Upscaler:
        """Load the upscaler ``model``: fp16 on CUDA, fp32 on CPU."""
        return cls(*load_pretrained(DiffusionPipeline, model, device))

    @keeps_vae_dtype
    def generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None = None) -> list[Image]:
        """Upscale the init image x4 (shrunk first if x4 would pass the output limit), then resample
        to the requested size; each step reported to ``on_step``, no image if it asked to stop."""
        low = inputs["init"]
        shrink = min(1.0, math.sqrt(MAX_UPSCALE_PIXELS / (self.FACTOR**2 * low.width * low.height)))
        # The upscaler's UNet wants sides in multiples of 8.
        size = (max(8, round(low.width * shrink / 8) * 8), max(8, round(low.height * shrink / 8) * 8))
        if size != low.size:
            low = low.resize(size, PILImage.Resampling.LANCZOS)
        self.pipe.scheduler = make_scheduler(spec.sampler, self.scheduler_config)
        with torch.inference_mode():
            try:
                image = self.pipe(
                    **prompt_arguments(self.pipe, spec.prompts), image=low, num_inference_steps=spec.steps,
                    guidance_scale=spec.cfg_scale, generator=generators_for(spec), output_type="pil",
                    callback=upscale_callback(spec.steps, on_step), callback_steps=1,
                ).images[0]  # fmt: skip
            except StopSampling:
                return []
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


def upscale_callback(steps: int, on_step: OnStep | None) -> Any:
    """Return the x4 pipeline's per-step ``callback`` (it has no ``callback_on_step_end``): reports
    each step of ``steps`` to ``on_step`` and raises ``StopSampling`` when it asks to stop."""

    def callback(index: int, _timestep: Any, latents: Any) -> None:
        if on_step is not None and on_step(index + 1, steps, latents):
            raise StopSampling

    return callback


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
