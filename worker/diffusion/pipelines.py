"""The pipeline wrappers: load a model's diffusers pipelines and run one job's sampling.

Part of the diffusion layer (``worker.diffusion``), the only worker code that touches torch and
diffusers (with the embedded-model builders, ``worker.embedded``).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from diffusers import (
    AutoPipelineForImage2Image,
    AutoPipelineForInpainting,
    AutoPipelineForText2Image,
)
from PIL import Image as PILImage
from PIL.Image import Image

from latentq.contract import JobKind, JobSpec, LoraWeight, WeightedPrompt
from worker.context import OnStep
from worker.diffusion.adapters import LoadedAdapters
from worker.diffusion.compiling import CompileWatch, compile_denoiser, served_shapes
from worker.diffusion.controlnets import control_arguments, controlled_pipeline
from worker.diffusion.hotswap import HotSwapAdapters
from worker.diffusion.loading import denoiser_of, load_pretrained, tune_for_cuda
from worker.diffusion.memory import MEASURE_SIDE, CudaMemory, DeviceMemory, MemoryProfile, measure_profile
from worker.diffusion.preview import SD_FACTORS, SDXL_BIAS, SDXL_FACTORS, preview_jpeg
from worker.diffusion.prompts import ConditioningCache
from worker.diffusion.quiet import serving
from worker.diffusion.schedulers import SchedulerCache
from worker.diffusion.steps import StopSampling, generators_for, step_callback
from worker.diffusion.vae import keeps_vae_dtype, set_tiling, tile_pixels
from worker.safety import SafetyGate

log = logging.getLogger("latentq.worker")


#: Where memory was not measured (CPU, or no warm-up), images of more pixels than this decode with
#: VAE tiling (bounded memory, seams blended): the 2 MP sizes of SD3 and FLUX. Measured, the
#: decode's own budget decides (``memory.MemoryProfile.tiles``).
TILE_ABOVE_PIXELS = 1024 * 1024


class WarmPipeline:
    """A warm Stable Diffusion model: text-to-image, and image-to-image and inpainting pipelines
    made from the same components (``from_pipe``: no second copy of the weights)."""

    def __init__(
        self,
        pipe: Any,
        device: torch.device,
        compile_unet: bool = False,
        controlnets: dict[str, Any] | None = None,
        compile_backend: str = "inductor",
        compile_on_cpu: bool = False,
    ) -> None:
        """``compile_unet``: ``torch.compile`` the denoiser with ``compile_backend``, on CUDA only
        unless ``compile_on_cpu`` (tests)."""
        self.device = device
        #: ControlNets this model may be conditioned by, by registry id (loaded by the worker).
        self.controlnets = controlnets or {}
        #: Controlled pipelines, by (job kind, ControlNet id): made on first use with ``from_pipe``.
        self.controlled: dict[tuple[str, str], Any] = {}
        if device.type == "cuda":
            tune_for_cuda(pipe, compile_unet)
        compiled = compile_unet and (device.type == "cuda" or compile_on_cpu)
        if compiled:
            # In place and lazily (the first call compiles): LoRA slots may still be added before it.
            compile_denoiser(denoiser_of(pipe), compile_backend)
        #: Counts the compilations of calls (nothing when not compiled).
        self.compile_watch = CompileWatch(compiled)
        #: Sizes (width, height) the warm-up compiles when compiled; empty: only the warm-up's own.
        self.compile_sizes: list[tuple[int, int]] = []
        #: Most images of one call (``LATENTQ_MAX_BATCH``), which the warm-up compiles too.
        self.compile_batch = 8
        #: The device's memory readings (None on CPU: batches are not capped by memory there).
        self.memory: DeviceMemory | None = CudaMemory(device) if device.type == "cuda" else None
        #: What calls take, measured by ``warm_up`` where ``memory`` is known; None: not measured,
        #: batches are not capped by memory.
        self.memory_profile: MemoryProfile | None = None
        self.pipes = {
            "text-to-image": pipe,
            "image-to-image": AutoPipelineForImage2Image.from_pipe(pipe),
            "masking": AutoPipelineForInpainting.from_pipe(pipe),
        }
        for derived in self.pipes.values():
            serving(derived)
        # Kept from load time: every job's scheduler is built from the model's own config.
        self.scheduler_config = pipe.scheduler.config
        #: The schedulers of the samplers jobs named, reused by later calls.
        self.schedulers = SchedulerCache(self.scheduler_config)
        #: The model's LoRA adapters (set by the worker's start-up); None: jobs may name none.
        self.adapters: LoadedAdapters | HotSwapAdapters | None = None
        #: The model's safety gate (set by the worker's start-up); None: its images are not checked.
        self.safety: SafetyGate | None = None
        #: Encoded prompts of recent jobs (every task's pipeline shares the text encoders).
        self.prompts = ConditioningCache()

    def use_loras(self, loras: list[LoraWeight]) -> None:
        """Make ``loras`` the active adapters of the next call (none: the base model exactly)."""
        if self.adapters is not None:
            self.adapters.activate(loras)
        elif loras:
            raise RuntimeError("this worker loads no LoRA adapters for this model")

    @property
    def pipe(self) -> Any:
        """The text-to-image pipeline."""
        return self.pipes["text-to-image"]

    def preview(self, latents: torch.Tensor) -> bytes:
        """Return a cheap JPEG preview of ``latents`` with this model family's latent colours."""
        if getattr(self.pipe, "text_encoder_2", None) is not None:
            return preview_jpeg(latents, SDXL_FACTORS, SDXL_BIAS)
        return preview_jpeg(latents, SD_FACTORS)

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        compile_unet: bool = False,
        controlnets: dict[str, Any] | None = None,
        **compiling: Any,
    ) -> WarmPipeline:
        """Load ``model`` (a folder or hub id): fp16 on CUDA, fp32 on CPU; ``compiling``:
        ``compile_backend``, ``compile_on_cpu``."""
        pipe, target = load_pretrained(AutoPipelineForText2Image, model, device)
        return cls(pipe, target, compile_unet=compile_unet, controlnets=controlnets, **compiling)

    def pipe_for(self, spec: JobSpec) -> Any:
        """Return the pipeline of ``spec``'s kind, controlled by its ControlNet if it names one."""
        if spec.control_model is None:
            return self.pipes[spec.task]
        key = (spec.task, spec.control_model)
        if key not in self.controlled:
            if spec.control_model not in self.controlnets:
                raise LookupError(f"this worker has no ControlNet '{spec.control_model}'")
            self.controlled[key] = controlled_pipeline(
                self.pipe, spec.task, self.controlnets[spec.control_model]
            )
        return self.controlled[key]

    def batch_limit(self, spec: JobSpec) -> int | None:
        """Most images of ``spec``'s size one call can hold in the memory available now (None: no
        limit known, as on CPU): never an out-of-memory error from batching."""
        if self.memory is None or self.memory_profile is None:
            return None
        pixels = spec.width * spec.height
        return self.memory_profile.batch_limit(pixels, self.memory.available(), tile_pixels(self.pipe.vae))

    def decodes_tiled(self, pixels: int) -> bool:
        """Whether images of ``pixels`` decode in tiles: past the measured decode budget, or past
        ``TILE_ABOVE_PIXELS`` where nothing was measured."""
        if self.memory_profile is not None:
            return self.memory_profile.tiles(pixels)
        return pixels > TILE_ABOVE_PIXELS

    @keeps_vae_dtype
    def generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None = None) -> list[Image]:
        """Run sampling for ``spec`` with its input images (``init``, ``mask``), reporting each step;
        no images if ``on_step`` asked to stop."""
        try:
            return self.compile_watch.call(
                lambda: self._generate(spec, inputs, on_step), f"{spec.width}x{spec.height} x{spec.samples}"
            )
        except StopSampling:
            return []

    def _generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None) -> list[Image]:
        pipe = self.pipe_for(spec)
        self.use_loras(spec.loras)  # the controlled pipelines share the UNet, adapters included
        pipe.scheduler = self.schedulers.get(spec.sampler)
        control = control_arguments(spec, inputs["control"]) if spec.control_model is not None else {}
        common = {
            **control,
            **self.prompt_arguments(pipe, spec),
            "num_inference_steps": spec.steps,
            "guidance_scale": spec.cfg_scale,
            "num_images_per_prompt": spec.samples,
            "generator": generators_for(spec),
            "output_type": "pil",
        }
        # The VAE is shared by every task's pipeline; calls run one at a time.
        set_tiling(pipe.vae, self.decodes_tiled(spec.width * spec.height))
        with torch.inference_mode():
            if spec.task == "image-to-image":
                return self._image_to_image(pipe, spec, inputs["init"], common, on_step)
            common["callback_on_step_end"] = step_callback(None, on_step)
            if spec.task == "masking":
                return self._masking(pipe, spec, inputs["init"], inputs["mask"], common)
            return list(pipe(width=spec.width, height=spec.height, **common).images)

    @keeps_vae_dtype
    def prompt_arguments(self, pipe: Any, spec: JobSpec) -> dict[str, Any]:
        """Return the conditioning arguments of ``spec``'s call: its encoded prompts, cached."""
        with torch.inference_mode():
            return self.prompts.get(pipe, spec.prompts, spec.loras, self.device)

    def generate_batch(self, members: list[tuple[JobSpec, OnStep | None]]) -> list[list[Image]]:
        """Run text-to-image jobs that share a ``batch_key`` as one pipeline call (see
        ``_generate_batch``), counting what it compiles."""
        first = members[0][0]
        what = f"{first.width}x{first.height} x{sum(spec.samples for spec, _ in members)}"
        return self.compile_watch.call(lambda: self._generate_batch(members), what)

    def _generate_batch(self, members: list[tuple[JobSpec, OnStep | None]]) -> list[list[Image]]:
        """Run text-to-image jobs that share a ``batch_key`` as one pipeline call; return each one's
        images. Each image keeps its own seeded generator and each job its own prompt conditioning,
        so a job's images are what it would get alone (to float rounding: see docs). ``on_step`` of
        a member sees its own slice of the latents; a member that asks to stop is left to finish
        with the others (its images are then discarded by the caller); when all have asked, the call
        ends at once and each gets no images."""
        first = members[0][0]
        pipe = self.pipe
        self.use_loras(first.loras)  # part of the batch key: every member names the same
        pipe.scheduler = self.schedulers.get(first.sampler)
        set_tiling(pipe.vae, self.decodes_tiled(first.width * first.height))
        with torch.inference_mode():
            parts = [self.prompts.get(pipe, spec.prompts, spec.loras, self.device) for spec, _ in members]
            arguments = {
                name: torch.cat([part[name].repeat_interleave(spec.samples, dim=0)
                                 for part, (spec, _) in zip(parts, members, strict=True)])
                for name in parts[0]
            }  # fmt: skip
            generators = [
                torch.Generator("cpu").manual_seed(seed) for spec, _ in members for seed in spec.image_seeds()
            ]
            slices, offset = [], 0
            for spec, on_step in members:
                slices.append((offset, offset + spec.samples, on_step))
                offset += spec.samples
            stopped: set[int] = set()

            def on_batch_step(step: int, total: int, latents: Any) -> bool:
                for index, (start, end, on_step) in enumerate(slices):
                    if index not in stopped and on_step is not None:
                        part = latents[start:end] if latents is not None else None
                        if on_step(step, total, part):
                            stopped.add(index)
                return len(stopped) == len(slices)

            try:
                images = pipe(
                    **arguments, width=first.width, height=first.height, num_inference_steps=first.steps,
                    guidance_scale=first.cfg_scale, generator=generators, output_type="pil",
                    callback_on_step_end=step_callback(None, on_batch_step),
                ).images  # fmt: skip
            except StopSampling:  # every member asked to stop
                return [[] for _ in members]
        return [list(images[start:end]) for start, end, _ in slices]

    def _image_to_image(
        self, pipe: Any, spec: JobSpec, init: Image, common: dict, on_step: OnStep | None
    ) -> list[Image]:
        strength = spec.strength if spec.strength is not None else 1.0
        run = min(int(spec.steps * strength), spec.steps)  # diffusers' count of steps run
        if run < 1:  # nothing to denoise: the init image itself
            return [init.copy() for _ in range(spec.samples)]
        keep = max(1, run - int(spec.steps * spec.schedule_end))
        stop_at = keep * pipe.scheduler.order if keep < run else None  # a step schedule's end
        callback = step_callback(stop_at, on_step)
        return list(pipe(image=init, strength=strength, callback_on_step_end=callback, **common).images)

    def _masking(self, pipe: Any, spec: JobSpec, init: Image, mask: Image, common: dict) -> list[Image]:
        result = pipe(
            image=init, mask_image=mask, width=spec.width, height=spec.height, strength=1.0, **common
        )
        # The mask is the strength of generation per pixel: black pixels keep the init image exactly.
        return [PILImage.composite(image, init, mask) for image in result.images]

    def _compile_served_sizes(self, task: JobKind) -> None:
        """When compiled, run the shapes jobs will have (``compiling.served_shapes``), so that
        jobs compile nothing."""
        if self.compile_watch.enabled:
            for spec, inputs in served_shapes(task, self.compile_sizes, self.compile_batch):
                self.generate(spec, inputs)
            log.info("torch.compile warm-up compiled %d frame(s)", self.compile_watch.counts["warm-up"])

    def warm_up(self, task: JobKind = "text-to-image") -> float:
        """Run one small ``task`` job so the first job is not slow (and, when compiled, compile the
        served shapes); return its seconds."""
        started = time.perf_counter()
        self.compile_watch.warming = True  # until it returns: the memory measure may compile too
        spec = JobSpec(
            job_id="warm-up", model="warm-up", prompts=[WeightedPrompt(text="warm-up", weight=1.0)],
            width=64, height=64, steps=2, cfg_scale=7.0, samples=1, seed=1, sampler="K_EULER", task=task,
            strength=1.0,
        )  # fmt: skip
        inputs = {"init": PILImage.new("RGB", (64, 64)), "mask": PILImage.new("L", (64, 64), 255)}
        self.generate(spec, inputs)
        self._compile_served_sizes(task)
        if self.memory is not None and task == "text-to-image":
            self.memory_profile = profile = measure_profile(self.memory, self.pipe)
            log.info("at %dx%d: one more image in a batch takes %.0f MiB, a call %.0f MiB more, a decode "
                     "%.0f MiB (budget %.0f MiB)", MEASURE_SIDE, MEASURE_SIDE, profile.image_bytes / 2**20,
                     profile.call_bytes / 2**20, profile.decode_bytes / 2**20,
                     profile.decode_budget / 2**20)  # fmt: skip
        self.compile_watch.warming = False
        return time.perf_counter() - started
