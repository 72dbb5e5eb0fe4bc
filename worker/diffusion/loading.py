"""Loading a model's pipeline onto its device: the device a setting names, the dtype for it
(fp16 or bf16 on CUDA, fp32 on CPU), and the CUDA tuning every served pipeline gets."""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from diffusers.utils import deprecation_utils as diffusers_deprecations

from worker.diffusion.quiet import serving

log = logging.getLogger("latentq.worker")


#: ``from_pretrained``'s dtype keyword: ``dtype`` where diffusers has deprecated ``torch_dtype``
#: (it warns at every load), ``torch_dtype`` in the releases before, which would not read ``dtype``.
DTYPE_KEYWORD = "dtype" if hasattr(diffusers_deprecations, "_resolve_dtype") else "torch_dtype"


def resolve_device(device: str) -> torch.device:
    """Return the torch device for a setting of ``auto``, ``cuda`` or ``cpu``."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_pretrained(
    loader: Any, source: str, device: str, cuda_dtype: torch.dtype = torch.float16, **components: Any
) -> tuple[Any, torch.device]:
    """Load ``source`` (a folder or hub id) with ``loader``: ``cuda_dtype`` on CUDA, fp32 on CPU;
    ``components`` replace the checkpoint's (None: leave one out)."""
    target = resolve_device(device)
    dtype = cuda_dtype if target.type == "cuda" else torch.float32
    started = time.perf_counter()
    pipe = serving(loader.from_pretrained(source, **{DTYPE_KEYWORD: dtype}, **components).to(target))
    log.info("loaded %s (%s) on %s %s in %.1f s", source, type(pipe).__name__, target, dtype,
             time.perf_counter() - started)  # fmt: skip
    return pipe, target


def denoiser_of(pipe: Any) -> Any:
    """Return ``pipe``'s denoiser: the UNet, or the transformer of a flow-matching model."""
    return pipe.unet if getattr(pipe, "unet", None) is not None else pipe.transformer


def tune_for_cuda(pipe: Any, compile_unet: bool) -> None:
    """Make ``pipe`` fast on CUDA: VAE slicing (a batch decodes one image at a time; SDPA attention
    is diffusers' default with torch 2) and, when compiled, a channels-last UNet; ``torch.compile``
    is ``WarmPipeline``'s (``compiling``)."""
    # Channels-last only with compile: eager GroupNorm wants contiguous input, so without the
    # compiler fusing them it adds a layout copy around every norm.
    if compile_unet and getattr(pipe, "unet", None) is not None:
        pipe.unet.to(memory_format=torch.channels_last)
    pipe.vae.enable_slicing()
