"""Warm flow-matching models: SD3/3.5 and FLUX.1, transformers sampled by flow matching.

They run through ``WarmPipeline``'s job and batch paths (text-to-image, and image-to-image and
inpainting pipelines made with ``from_pipe``); what differs is here and in the modules they
dispatch on: bf16 on CUDA (the published weights' dtype: fp16 overflows in their T5 and
transformer), flow-matching schedulers (``schedulers.FLOW_SCHEDULERS``), the pipelines' own
prompt encoders (``flow_prompts``), the image size given to their image-to-image pipelines, and
previews of 16-channel latents.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoPipelineForText2Image
from PIL.Image import Image

from latentq.contract import JobSpec
from worker.context import OnStep
from worker.diffusion.loading import load_pretrained
from worker.diffusion.pipelines import WarmPipeline
from worker.diffusion.preview import preview_jpeg
from worker.diffusion.prompts import prompt_arguments

#: RGB of the first three latent channels of a 16-channel SD3/FLUX latent, the others left out:
#: a rough preview of the layout, not of the colours (no published linear map is shipped here).
FLOW_FACTORS = ((0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.5)) + ((0.0, 0.0, 0.0),) * 13


class FlowPipeline(WarmPipeline):
    """A warm SD3 or FLUX model (``family`` ``sd3`` or ``flux``)."""

    def __init__(self, pipe: Any, device: torch.device, compile_unet: bool = False, **compiling: Any) -> None:
        super().__init__(pipe, device, compile_unet, **compiling)
        #: Output size of the call running now, (width, height) pixels: FLUX's latents are packed
        #: 2x2 into a sequence, unpacked for previews with it. Calls run one at a time.
        self.size = (0, 0)

    @classmethod
    def load(
        cls, model: str, device: str = "auto", compile_unet: bool = False, t5: bool = True, **compiling: Any
    ) -> FlowPipeline:
        """Load ``model`` (a folder or hub id): bf16 on CUDA, fp32 on CPU; ``t5=False`` leaves an
        SD3 model's T5 encoder out (prompts read by its CLIP encoders only)."""
        components = {} if t5 else {"text_encoder_3": None, "tokenizer_3": None}
        pipe, target = load_pretrained(AutoPipelineForText2Image, model, device, torch.bfloat16, **components)
        return cls(pipe, target, compile_unet=compile_unet, **compiling)

    def preview(self, latents: torch.Tensor) -> bytes:
        """Return a rough JPEG preview of ``latents`` (FLUX's unpacked first)."""
        if latents.ndim == 3:  # FLUX: [batch, tokens, channels x 2 x 2]
            factor = self.pipe.vae_scale_factor
            latents = self.pipe._unpack_latents(latents, self.size[1], self.size[0], factor)
        return preview_jpeg(latents, FLOW_FACTORS)

    def _generate(self, spec: JobSpec, inputs: dict[str, Image], on_step: OnStep | None) -> list[Image]:
        self.size = (spec.width, spec.height)
        return super()._generate(spec, inputs, on_step)

    def prompt_arguments(self, pipe: Any, spec: JobSpec) -> dict[str, Any]:
        """Return the conditioning arguments of ``spec``'s call, uncached: SD3's and FLUX's pipelines
        repeat given embeddings for ``num_images_per_prompt`` differently from their own encoding,
        so a job of plain prompts passes its strings, as plain diffusers does."""
        return prompt_arguments(pipe, spec.prompts)

    def generate_batch(self, members: list[tuple[JobSpec, OnStep | None]]) -> list[list[Image]]:
        """Run text-to-image jobs that share a ``batch_key`` as one call (``WarmPipeline``'s)."""
        self.size = (members[0][0].width, members[0][0].height)
        return super().generate_batch(members)

    def _image_to_image(
        self, pipe: Any, spec: JobSpec, init: Image, common: dict, on_step: OnStep | None
    ) -> list[Image]:
        # SD3's and FLUX's image-to-image pipelines resize the init image to the transformer's default
        # sample size (1024x1024 for the published models) unless told the size.
        common = {**common, "width": spec.width, "height": spec.height}
        return super()._image_to_image(pipe, spec, init, common, on_step)
