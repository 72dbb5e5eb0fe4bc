"""torch.compile of the tiny model for real, on CPU: the warm-up compiles the served shapes and jobs
compile nothing more (new sizes, batch sizes, cfg 1), and LoRA adapters hot-swapped into the
compiled UNet's slots give plain diffusers' images with the adapters loaded normally, pixel for
pixel, without a recompile; no adapters gives the base image exactly.

The CPU tests use dynamo's ``eager`` backend: dynamo traces, guards and counts (re)compiles exactly
as with inductor, without inductor's C++ code generation (minutes for the tiny UNet on two cores).
The GPU test runs inductor on CUDA fp16.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from latentq.contract import JobSpec, LoraWeight, WeightedPrompt
from worker import metrics
from worker.diffusion.adapters import AdapterFile
from worker.diffusion.compiling import configure_compile
from worker.diffusion.hotswap import HotSwapAdapters
from worker.diffusion.pipelines import WarmPipeline
from worker.embedded.loras import LORA_WEIGHT_NAME, ensure_tiny_lora, seeded_adapter

PROMPT = "a lighthouse at dusk"
#: The second adapter: rank 2 (the slots are padded to MAX_RANK), alpha 4 (scale 2), UNet only,
#: fewer layers than the first: every way hot-swapping differs from loading.
SECOND_RANK, SECOND_ALPHA = 2, 4
MAX_RANK = 8


def build_second_adapter(model: Path, folder: Path) -> Path:
    """Write a seeded rank-2 UNet-only adapter of ``model`` (on q and v projections) to ``folder``."""
    from diffusers import AutoPipelineForText2Image, StableDiffusionPipeline

    if (folder / LORA_WEIGHT_NAME).is_file():
        return folder
    pipe = AutoPipelineForText2Image.from_pretrained(model)
    layers = seeded_adapter(pipe.unet, ["to_q", "to_v"], 7, rank=SECOND_RANK, alpha=SECOND_ALPHA)
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers, weight_name=LORA_WEIGHT_NAME)
    return folder


@pytest.fixture(scope="module")
def adapter_files(tiny_model, models_dir) -> dict[str, AdapterFile]:
    first = ensure_tiny_lora(models_dir / "compile-lora-first", "tiny-sd-lora")
    second = build_second_adapter(tiny_model, models_dir / "compile-lora-second")
    return {
        "first": AdapterFile(str(first), LORA_WEIGHT_NAME),
        "second": AdapterFile(str(second), LORA_WEIGHT_NAME),
    }


def spec(width: int = 64, height: int = 64, cfg_scale: float = 7.0, samples: int = 1, text: str = PROMPT,
         loras: list[LoraWeight] | None = None) -> JobSpec:  # fmt: skip
    return JobSpec(
        job_id="compile-test", model="tiny-sd", prompts=[WeightedPrompt(text=text, weight=1.0)], width=width,
        height=height, steps=3, cfg_scale=cfg_scale, samples=samples, seed=11, sampler="K_EULER",
        loras=loras or [],
    )  # fmt: skip


def pixels(images) -> np.ndarray:
    return np.stack([np.asarray(image) for image in images]).astype(np.int16)


@pytest.fixture(scope="module")
def compiled(tiny_model, adapter_files) -> WarmPipeline:
    """The tiny model compiled on CPU (eager backend) with two hot-swap slots, warmed up at 64x64."""
    configure_compile(None)
    metrics.declare_models([])  # the compile counters' series, at 0
    warm = WarmPipeline.load(str(tiny_model), "cpu", compile_unet=True, compile_backend="eager",
                             compile_on_cpu=True)  # fmt: skip
    warm.adapters = HotSwapAdapters(
        warm.pipe, adapter_files.__getitem__, ["first"], slots=2, max_rank=MAX_RANK
    )
    warm.compile_sizes = [(64, 64)]
    warm.warm_up()
    return warm


@pytest.fixture(scope="module")
def plain(tiny_model, adapter_files) -> WarmPipeline:
    """The same model, not compiled, with both adapters loaded the usual way (``LoadedAdapters``)."""
    from worker.diffusion.adapters import LoadedAdapters

    warm = WarmPipeline.load(str(tiny_model), "cpu")
    warm.adapters = LoadedAdapters(warm.pipe, adapter_files.__getitem__, max_loaded=4)
    return warm


@pytest.mark.slow
def test_compile_flag_alone_does_not_compile_on_cpu(tiny_model):
    assert not WarmPipeline.load(str(tiny_model), "cpu", compile_unet=True).compile_watch.enabled


@pytest.mark.slow
def test_warm_up_compiles_the_served_shapes_and_jobs_compile_nothing(compiled, plain):
    # Batch 2 (cfg > 1), batch 1 (cfg 1), batch 16 (a dynamic batch is guarded to a range).
    assert compiled.compile_watch.counts["warm-up"] >= 3
    jobs_before = metrics.REGISTRY.get_sample_value("latentq_worker_torch_compiles_total", {"phase": "jobs"})
    shapes = [spec(), spec(cfg_scale=1.0), spec(samples=3), spec(samples=8), spec(width=96, height=128),
              spec(text=" ".join(["lighthouse"] * 100))]  # a long prompt: two 77-token chunks  # fmt: skip
    for shape in shapes:
        assert pixels(compiled.generate(shape, {})).shape[0] == shape.samples
    assert compiled.compile_watch.counts["jobs"] == 0
    jobs_after = metrics.REGISTRY.get_sample_value("latentq_worker_torch_compiles_total", {"phase": "jobs"})
    assert jobs_after == jobs_before
    # Compiling changes nothing in what is computed (eager backend: the same kernels).
    assert np.array_equal(pixels(compiled.generate(spec(width=96, height=128), {})),
                          pixels(plain.generate(spec(width=96, height=128), {})))  # fmt: skip


@pytest.mark.slow
def test_hot_swapped_adapters_equal_loaded_adapters_without_recompiling(compiled, plain):
    base = pixels(plain.generate(spec(), {}))
    cases = [
        [LoraWeight(id="first", weight=0.8)],
        [LoraWeight(id="second", weight=1.0)],
        [LoraWeight(id="first", weight=0.5), LoraWeight(id="second", weight=0.7)],
        [LoraWeight(id="second", weight=0.3)],
        [],
        [LoraWeight(id="first", weight=0.0)],
    ]
    for loras in cases:
        swapped, loaded = (
            pixels(compiled.generate(spec(loras=loras), {})),
            pixels(plain.generate(spec(loras=loras), {})),
        )
        assert np.array_equal(swapped, loaded), loras  # padding to MAX_RANK adds exact zeros
        if not loras or loras[0].weight == 0.0:
            assert np.array_equal(swapped, base)
        else:
            assert not np.array_equal(swapped, base)
    assert compiled.adapters.holding == ["first", "second"] or set(compiled.adapters.holding) == {
        "first",
        "second",
    }
    assert compiled.compile_watch.counts["jobs"] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_inductor_on_cuda_hot_swaps_without_recompiling(tiny_model, adapter_files):
    """CUDA fp16 with inductor: each adapter's image within 3/255 (mean 0.5/255) of the uncompiled
    pipeline's with the adapter loaded normally (inductor fuses fp16 ops in another order), no
    recompile after the warm-up, and finite, non-constant images."""
    from worker.diffusion.adapters import LoadedAdapters

    configure_compile(None)
    warm = WarmPipeline.load(str(tiny_model), "cuda", compile_unet=True)
    warm.adapters = HotSwapAdapters(
        warm.pipe, adapter_files.__getitem__, ["first"], slots=2, max_rank=MAX_RANK
    )
    warm.compile_sizes = [(64, 64)]
    warm.warm_up()
    plain = WarmPipeline.load(str(tiny_model), "cuda")
    plain.adapters = LoadedAdapters(plain.pipe, adapter_files.__getitem__, max_loaded=4)
    for loras in ([LoraWeight(id="first", weight=0.8)], [LoraWeight(id="second", weight=1.0)], []):
        swapped, loaded = (
            pixels(warm.generate(spec(loras=loras), {})),
            pixels(plain.generate(spec(loras=loras), {})),
        )
        assert swapped.std() > 1
        difference = np.abs(swapped - loaded)
        assert difference.max() <= 3 and difference.mean() <= 0.5, (
            loras,
            difference.max(),
            difference.mean(),
        )
    assert warm.compile_watch.counts["jobs"] == 0
