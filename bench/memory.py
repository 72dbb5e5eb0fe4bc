"""Worker memory with and without its image-to-image and inpainting pipelines, side by side.

Builds Stable Diffusion 1.5's architecture from its published configuration with random
weights (memory does not depend on weight values) and measures the process's resident memory
(RSS): after the text-to-image pipeline alone, after ``WarmPipeline`` adds image-to-image and
inpainting pipelines with ``from_pipe`` (shared components), and, for comparison, after loading
a second, independent copy of the model as a separate pipeline would. CPU, fp32.

    .venv/bin/python -m bench.memory [--json bench/results/memory.json]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
from pathlib import Path

import torch

from bench import write_result

# Stable Diffusion 1.5's UNet, VAE and text encoder configurations (from its model_index components).
UNET = {
    "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
}  # fmt: skip
VAE = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2, "sample_size": 512,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
}  # fmt: skip
TEXT = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
        "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}  # fmt: skip


def rss_mib() -> float:
    """Return this process's resident memory, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def build_sd15():  # -> StableDiffusionPipeline
    """Return an SD 1.5-architecture pipeline with random weights (the embedded tokenizer)."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from worker.embedded.tokenizer import build_tokenizer

    with torch.no_grad():
        return StableDiffusionPipeline(
            vae=AutoencoderKL(**VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**TEXT)),
            tokenizer=build_tokenizer(), unet=UNet2DConditionModel(**UNET),
            scheduler=PNDMScheduler(skip_prk_steps=True, steps_offset=1), safety_checker=None,
            feature_extractor=None, requires_safety_checker=False,
        )  # fmt: skip


def main() -> int:
    """Measure; print a table; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    from worker.diffusion.pipelines import WarmPipeline

    gc.collect()
    baseline = rss_mib()
    pipe = build_sd15()
    gc.collect()
    text_only = rss_mib()
    warm = WarmPipeline(pipe, torch.device("cpu"))
    gc.collect()
    with_image_pipelines = rss_mib()
    shared = all(
        warm.pipes[task].unet is pipe.unet and warm.pipes[task].vae is pipe.vae for task in warm.pipes
    )
    second_copy = build_sd15()
    gc.collect()
    with_second_copy = rss_mib()
    parameters = sum(
        p.numel() for module in (pipe.unet, pipe.vae, pipe.text_encoder) for p in module.parameters()
    )
    rows = [
        ("text-to-image pipeline alone", text_only - baseline),
        ("+ image-to-image and inpainting (from_pipe)", with_image_pipelines - text_only),
        ("+ a second, independent copy of the model", with_second_copy - with_image_pipelines),
    ]
    result = {
        "benchmark": "memory",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}",
        "model": f"SD 1.5 architecture, random weights, fp32, {parameters / 1e6:.0f} M parameters",
        "components_shared": shared,
        "rows_mib": dict(rows),
    }
    del second_copy
    print(result["model"])
    for name, mib in rows:
        print(f"{name:48} {mib:10.0f} MiB")
    print(f"image pipelines share the text-to-image components: {shared}")
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
