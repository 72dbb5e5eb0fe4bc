"""The memory budget of batches: denoising and decoding measured apart, the cap they give, when the
VAE tiles, and CUDA's available memory; with a hand-written fake of the device's readings (no GPU)."""

from __future__ import annotations

import pytest
import torch

from latentq.contract import JobSpec, WeightedPrompt
from worker.diffusion.memory import (
    DECODE_SHARE,
    MEASURE_PIXELS,
    MEMORY_SHARE,
    CudaMemory,
    MemoryProfile,
    measure_profile,
)
from worker.diffusion.pipelines import WarmPipeline

GIB = 2**30
WEIGHTS, CALL, IMAGE, DECODE = 4 * GIB, GIB // 2, GIB, 6 * GIB


class FakeMemory:
    """A device whose allocations are whatever ``use`` says; ``available`` is fixed."""

    def __init__(self, available: int, allocated: int = WEIGHTS) -> None:
        self.now = self.highest = allocated
        self.free = available

    def use(self, allocated: int) -> None:
        self.now = allocated
        self.highest = max(self.highest, allocated)

    def synchronize(self) -> None:
        pass

    def reset_peak(self) -> None:
        self.highest = self.now

    def peak(self) -> int:
        return self.highest

    def allocated(self) -> int:
        return self.now

    def available(self) -> int:
        return self.free


class FakeVae:
    def __init__(self) -> None:
        self.decoder = torch.nn.Identity()  # a real module: the measurement hooks it


class FakePipe:
    """Records the measuring calls; its memory use is SDXL's shape at 1024x1024: the fp32 decode
    takes more than denoising two images."""

    def __init__(self, memory: FakeMemory) -> None:
        self.memory, self.vae, self.calls = memory, FakeVae(), []

    def __call__(self, pipe: FakePipe, images: int, output_type: str) -> None:
        self.calls.append((images, output_type))
        self.memory.use(WEIGHTS + CALL + images * IMAGE)
        self.memory.use(WEIGHTS)
        if output_type != "latent":
            self.vae.decoder(torch.zeros(1))
            self.memory.use(WEIGHTS + DECODE)
            self.memory.use(WEIGHTS)


def test_denoising_and_decoding_are_measured_apart():
    memory = FakeMemory(available=40 * GIB)
    pipe = FakePipe(memory)
    profile = measure_profile(memory, pipe, call=pipe)
    assert pipe.calls == [(1, "latent"), (2, "latent"), (1, "pil")]
    assert profile == MemoryProfile(image_bytes=IMAGE, call_bytes=CALL, decode_bytes=DECODE,
                                    decode_budget=40 * GIB * DECODE_SHARE)  # fmt: skip
    # The old estimate (whole calls at one and two images) saw only the decode's peak in both.
    assert (
        max(WEIGHTS + CALL + 2 * IMAGE, WEIGHTS + DECODE) - max(WEIGHTS + CALL + IMAGE, WEIGHTS + DECODE) == 0
    )


def test_the_cap_limits_batches_by_size():
    profile = MemoryProfile(image_bytes=IMAGE, call_bytes=CALL, decode_bytes=DECODE, decode_budget=20 * GIB)
    available = 20 * GIB  # 16 GiB usable
    assert profile.batch_limit(MEASURE_PIXELS, available, 512 * 512) == int((16 * GIB - CALL) / IMAGE) == 15
    # Four times the pixels: a quarter of the images (the fixed part grows with them too).
    assert profile.batch_limit(4 * MEASURE_PIXELS, available, 512 * 512) == int((16 - 2) / 4) == 3
    assert profile.batch_limit(MEASURE_PIXELS, GIB, 512 * 512) == 1  # a lone image is always tried
    assert MEMORY_SHARE == 0.8


def test_a_decode_past_its_budget_tiles_and_the_tile_bounds_it():
    profile = MemoryProfile(image_bytes=1, call_bytes=0, decode_bytes=DECODE, decode_budget=12 * GIB)
    assert not profile.tiles(2 * MEASURE_PIXELS)  # 12 GiB: within
    assert profile.tiles(3 * MEASURE_PIXELS)  # 18 GiB: past
    # Untiled, a 2.6-MP decode would take 60 GiB; tiled at 512x512 it takes 6 GiB, and the decoded
    # outputs (24 bytes a pixel) bound the batch.
    pixels = 10 * MEASURE_PIXELS
    assert profile.batch_limit(pixels, 20 * GIB, 512 * 512) == int(10 * GIB / (pixels * 24))


def test_cuda_memory_counts_the_allocators_cached_free_memory(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (2 * GIB, 80 * GIB))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 10 * GIB)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 4 * GIB)
    assert CudaMemory(torch.device("cuda")).available() == 2 * GIB + 10 * GIB - 4 * GIB


class ModelMemory(FakeMemory):
    """A fake device driven by the real tiny model's modules: each UNet run uses ``sample`` bytes per
    latent sample of 64x64, each decoder run ``pixel`` bytes per output pixel."""

    def __init__(self, pipe, available: int, sample: int, pixel: int) -> None:
        super().__init__(available)
        pipe.unet.register_forward_hook(
            lambda _module, args, _output: self.spike(sample * args[0].numel() // (4 * 64 * 64))
        )
        pipe.vae.decoder.register_forward_hook(
            lambda _module, _args, output: self.spike(pixel * output[0, 0].numel())
        )

    def spike(self, size: int) -> None:
        """Allocate ``size`` bytes above the weights, then free them."""
        self.use(WEIGHTS + size)
        self.use(WEIGHTS)


def job(side: int) -> JobSpec:
    return JobSpec(job_id="m", model="m", prompts=[WeightedPrompt(text="a", weight=1.0)], width=side,
                   height=side, steps=1, cfg_scale=7.0, samples=1, seed=1, sampler="K_EULER")  # fmt: skip


def test_warm_up_measures_the_tiny_model_and_caps_and_tiles_its_calls(tiny_model):
    pipeline = WarmPipeline.load(str(tiny_model), "cpu")
    sample, pixel = 64 * 2**20, 20 * 2**10  # 64 MiB a 64x64 latent sample; 20 KiB a pixel: 5 GiB at 512²
    # At warm-up: a decode budget of 5/8 GiB, so 128x128 (5/16 GiB) decodes whole and 256x256
    # (5/4 GiB) in tiles.
    pipeline.memory = ModelMemory(pipeline.pipe, int(5 * GIB / 8 / DECODE_SHARE), sample, pixel)
    pipeline.warm_up()
    profile = pipeline.memory_profile
    assert profile.image_bytes == 2 * sample  # classifier-free guidance: two UNet samples an image
    assert profile.decode_bytes == pixel * MEASURE_PIXELS
    pipeline.memory.free = 8 * GIB
    assert pipeline.batch_limit(job(512)) == int((6.4 * GIB - profile.call_bytes) / (2 * sample)) == 51
    assert pipeline.batch_limit(job(1024)) < pipeline.batch_limit(job(512))
    pipeline.generate(job(256), {})
    assert pipeline.pipe.vae.use_tiling
    pipeline.generate(job(128), {})
    assert not pipeline.pipe.vae.use_tiling


@pytest.mark.parametrize("compile_unet", [False, True])
def test_channels_last_only_with_compile(tiny_model, compile_unet):
    from worker.diffusion.loading import tune_for_cuda

    pipe = WarmPipeline.load(str(tiny_model), "cpu").pipe
    tune_for_cuda(pipe, compile_unet)
    weight = pipe.unet.conv_in.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) == compile_unet
    assert pipe.vae.use_slicing
