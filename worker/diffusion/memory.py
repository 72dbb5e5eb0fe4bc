"""Accelerator memory: what one more image of a batch costs, what a decode costs, and so how many
images one pipeline call may hold and when the VAE decodes in tiles.

A text-to-image call has two phases that never overlap: denoising (the UNet or transformer; its
activations grow with the batch) and decoding (the VAE, sliced: one image at a time, so its peak
does not grow with the batch). ``measure_profile`` measures them apart at warm-up; a call's peak
is the larger of the two, so each bounds the batch on its own. The readings sit behind the small
``DeviceMemory`` protocol so the arithmetic is tested on CPU with a fake.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch

from worker.diffusion.vae import vae_dtype_kept

#: Side (pixels) of the warm-up calls that measure memory; other sizes scale by pixel count.
MEASURE_SIDE = 512
MEASURE_PIXELS = MEASURE_SIDE * MEASURE_SIDE
#: Share of the available memory a call may plan to use (the rest: allocator fragmentation and
#: what the linear scaling by pixel count misses).
MEMORY_SHARE = 0.8
#: Share of the memory available after warm-up one image's decode may take; a larger image
#: decodes in tiles (bounded memory, seams blended). Fixed at warm-up, so a size always decodes
#: the same way on a given worker (the same seed gives the same pixels).
DECODE_SHARE = 0.5
#: Bytes per pixel of one decoded image kept until the batch's decode ends (fp32 RGB, and the copy
#: the pipeline's concatenation makes).
DECODED_BYTES_PER_PIXEL = 2 * 3 * 4


class DeviceMemory(Protocol):
    """Memory readings of one accelerator, bytes."""

    def synchronize(self) -> None:
        """Wait for the work queued on the device."""

    def reset_peak(self) -> None:
        """Start a new peak: ``peak`` reads the most allocated from now on."""

    def peak(self) -> int:
        """Return the most bytes allocated since ``reset_peak``."""

    def allocated(self) -> int:
        """Return the bytes allocated now (weights and live tensors)."""

    def available(self) -> int:
        """Return the bytes a new allocation can get: free on the device plus cached by the allocator
        but unused."""


class CudaMemory:
    """``DeviceMemory`` of a CUDA device, read through ``torch.cuda``."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.device)

    def reset_peak(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.device)

    def peak(self) -> int:
        return torch.cuda.max_memory_allocated(self.device)

    def allocated(self) -> int:
        return torch.cuda.memory_allocated(self.device)

    def available(self) -> int:
        # mem_get_info's free misses what PyTorch's caching allocator holds reserved but unused:
        # after the first call that is most of what the next call can use.
        free, _total = torch.cuda.mem_get_info(self.device)
        return free + torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)


@dataclass(frozen=True)
class MemoryProfile:
    """What a model's calls take above its resident weights, bytes, measured at ``MEASURE_SIDE``
    squared; other sizes scale by pixel count."""

    #: Denoising: one more image of a batch.
    image_bytes: float
    #: Denoising: the part of a call that does not grow with the batch (the text encoders' output,
    #: workspaces).
    call_bytes: float
    #: Decoding one image (its peak above the weights: the upcast VAE of SDXL included).
    decode_bytes: float
    #: Most bytes one image's decode may take before it tiles (``DECODE_SHARE`` of the memory
    #: available after warm-up).
    decode_budget: float

    def decode_estimate(self, pixels: int) -> float:
        """Return the bytes an untiled decode of one image of ``pixels`` takes."""
        return self.decode_bytes * pixels / MEASURE_PIXELS

    def tiles(self, pixels: int) -> bool:
        """Whether images of ``pixels`` decode in tiles (their decode would pass the budget)."""
        return self.decode_estimate(pixels) > self.decode_budget

    def batch_limit(self, pixels: int, available: float, tile_pixels: int) -> int:
        """Return the most images of ``pixels`` one call may hold with ``available`` bytes free
        (at least 1: a lone image is always tried). ``tile_pixels``: pixels of one VAE tile."""
        usable = available * MEMORY_SHARE
        scale = pixels / MEASURE_PIXELS
        denoise = (usable - self.call_bytes * max(scale, 1.0)) / max(self.image_bytes * scale, 1.0)
        decode = self.decode_estimate(min(pixels, tile_pixels) if self.tiles(pixels) else pixels)
        decoded = (usable - decode) / (pixels * DECODED_BYTES_PER_PIXEL)
        return max(1, int(min(denoise, decoded)))


def measure_call(pipe: Any, images: int, output_type: str) -> None:
    """Run text-to-image ``pipe`` once at ``MEASURE_SIDE`` squared, 2 steps, untiled, with
    ``output_type`` (diffusers': ``latent`` stops before the decode)."""
    pipe.vae.disable_tiling()
    generators = [torch.Generator("cpu").manual_seed(index) for index in range(images)]
    with torch.inference_mode(), vae_dtype_kept(pipe.vae):
        pipe(
            prompt="measure", width=MEASURE_SIDE, height=MEASURE_SIDE, num_inference_steps=2,
            guidance_scale=7.0, num_images_per_prompt=images, generator=generators, output_type=output_type,
        )  # fmt: skip


def measure_profile(
    memory: DeviceMemory, pipe: Any, call: Callable[..., Any] = measure_call
) -> MemoryProfile:
    """Measure the ``MemoryProfile`` of text-to-image ``pipe``: denoising alone
    (``output_type="latent"``) at one and two images, then one image's decode (its peak taken from
    the VAE decoder's first run on, by a hook).

    Args:
        memory: the device's readings.
        pipe: the diffusers pipeline, warm.
        call: runs ``pipe`` for (pipe, images, output type) (``measure_call``).
    """
    memory.synchronize()
    baseline = memory.allocated()  # the weights, and what the warm-up left alive
    denoise = []
    for images in (1, 2):
        memory.reset_peak()
        call(pipe, images, "latent")
        memory.synchronize()
        denoise.append(memory.peak() - baseline)
    image_bytes = max(denoise[1] - denoise[0], 1)
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda *_: memory.reset_peak())
    try:
        memory.reset_peak()
        call(pipe, 1, "pil")
        memory.synchronize()
    finally:
        hook.remove()
    return MemoryProfile(
        image_bytes=float(image_bytes),
        call_bytes=float(max(denoise[0] - image_bytes, 0)),
        decode_bytes=float(max(memory.peak() - baseline, 1)),
        decode_budget=memory.available() * DECODE_SHARE,
    )
