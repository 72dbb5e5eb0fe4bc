"""ControlNets: load them, and make a model's controlled pipelines from its warm one.

A controlled pipeline (diffusers' ``StableDiffusion[XL]ControlNet[Img2Img|Inpaint]Pipeline``) is
made with ``from_pipe`` from the model's text-to-image pipeline: it holds the same UNet, VAE and
text encoders (no second copy of the weights) plus the ControlNet, which is loaded once per worker
and shared by every model of its family.
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
    ControlNetModel,
)
from PIL.Image import Image

from latentq.contract import JobKind, JobSpec
from worker.diffusion.edges import canny_edges
from worker.diffusion.quiet import serving

log = logging.getLogger("latentq.worker")

#: The auto-pipeline that makes each kind of job's controlled pipeline.
CONTROLLED = {
    "text-to-image": AutoPipelineForText2Image,
    "image-to-image": AutoPipelineForImage2Image,
    "masking": AutoPipelineForInpainting,
}


def load_controlnet(source: str, device: torch.device) -> Any:
    """Load a ``ControlNetModel`` from ``source`` (a folder or hub id): fp16 on CUDA, fp32 on CPU."""
    from worker.diffusion.loading import DTYPE_KEYWORD

    dtype = torch.float16 if device.type == "cuda" else torch.float32
    started = time.perf_counter()
    controlnet = ControlNetModel.from_pretrained(source, **{DTYPE_KEYWORD: dtype}).to(device)
    log.info("loaded ControlNet %s on %s in %.1f s", source, device, time.perf_counter() - started)
    return controlnet


def controlled_pipeline(base: Any, task: JobKind, controlnet: Any) -> Any:
    """Return ``task``'s controlled pipeline made from ``base`` (shared components) and ``controlnet``."""
    return serving(CONTROLLED[task].from_pipe(base, controlnet=controlnet))


def control_arguments(spec: JobSpec, control: Image) -> dict[str, Any]:
    """Return the ControlNet keyword arguments of ``spec``'s call: its control image (preprocessed
    as asked; the text-to-image pipeline takes it as ``image``, the others as ``control_image``),
    conditioning scale and the share of the schedule it acts in."""
    if spec.control_preprocess == "canny":
        control = canny_edges(control)
    image_argument = "image" if spec.task == "text-to-image" else "control_image"
    return {
        image_argument: control,
        "controlnet_conditioning_scale": spec.control_strength,
        "control_guidance_start": spec.control_start,
        "control_guidance_end": spec.control_end,
    }
