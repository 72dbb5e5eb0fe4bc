"""GPU throughput of full-size SD 1.5 and SDXL, direct and through the worker's batching path.

No weights can be downloaded, and the compute cost of a network does not depend on its weight
values, so both architectures are built from their published configurations with random
weights, directly on the device, in fp16. For each model and batch size (1, 2, 4, 8, 16 images at
512x512 for SD 1.5, 1024x1024 for SDXL, 20 steps, ``K_EULER``, cfg 7): UNet iterations/s,
images/s and peak memory, for the plain diffusers call ("direct") and for
``WarmPipeline.generate_batch`` ("worker batch", the path a batching worker takes). Both run on
the one pipeline after ``WarmPipeline`` has tuned it (``tune_for_cuda``: UNet layout, VAE slicing,
compile if asked) with the same scheduler, cfg, size, seeds and output type, so the two rows of a
batch size differ only in what the service adds (prompt conditioning per job, step callbacks,
slicing the batch back into jobs).

Each row is appended to ``--jsonl`` as it finishes (one JSON object a line, flushed), and an error
of any kind in one row is recorded in that row (``error``, ``message``) and the run goes on.

    .venv/bin/python -m bench.gpu [--models sd15 sdxl] [--batches 1 2 4 8 16] [--steps 20]
        [--jsonl bench/results/gpu.jsonl] [--json bench/results/gpu.json]

It needs a CUDA device; ``--device cpu --tiny --side 64 --steps 1 --batches 1`` only checks the
script (``--tiny``: the embedded tiny models instead of the full-size architectures).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch

from bench import append_row, error_fields, write_result
from latentq.contract import JobSpec, WeightedPrompt
from worker.embedded.models import build_sd_pipeline, build_sdxl_pipeline, sd_pipeline, sdxl_scheduler
from worker.embedded.tokenizer import build_tokenizer

SIDES = {"sd15": 512, "sdxl": 1024}


def _clip(tokenizer, hidden: int, layers: int, heads: int, projection: bool = False):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=hidden,
        intermediate_size=hidden * 4,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        max_position_embeddings=77,
        projection_dim=hidden,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if projection else CLIPTextModel(config)


def _vae(scaling: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        scaling_factor=scaling,
    )


def build(model: str, device: torch.device, tiny: bool = False):
    """Return a full-size ``sd15`` or ``sdxl`` pipeline with random weights, in fp16 on ``device``
    (fp32 off CUDA); ``tiny``: the embedded tiny model of that family instead (to check scripts)."""
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel

    if tiny:
        return _placed(build_sd_pipeline() if model == "sd15" else build_sdxl_pipeline(), device)

    tokenizer = build_tokenizer()
    scheduler = sdxl_scheduler()  # SD 1.5's betas too, with Euler
    with torch.device(device):
        if model == "sd15":  # runwayml/stable-diffusion-v1-5's unet/config.json, in diffusers' defaults
            unet = UNet2DConditionModel(sample_size=64, cross_attention_dim=768, attention_head_dim=8)
            pipe = sd_pipeline(_vae(0.18215), _clip(tokenizer, 768, 12, 12), tokenizer, unet, scheduler)
        else:  # stabilityai/stable-diffusion-xl-base-1.0's unet/config.json
            unet = UNet2DConditionModel(
                sample_size=128,
                block_out_channels=(320, 640, 1280),
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
                transformer_layers_per_block=(1, 2, 10),
                attention_head_dim=(5, 10, 20),
                cross_attention_dim=2048,
                use_linear_projection=True,
                addition_embed_type="text_time",
                addition_time_embed_dim=256,
                projection_class_embeddings_input_dim=2816,
            )
            pipe = StableDiffusionXLPipeline(
                vae=_vae(0.13025),
                text_encoder=_clip(tokenizer, 768, 12, 12),
                text_encoder_2=_clip(tokenizer, 1280, 32, 20, projection=True),
                tokenizer=tokenizer,
                tokenizer_2=build_tokenizer(),
                unet=unet,
                scheduler=scheduler,
                force_zeros_for_empty_prompt=True,
            )
    return _placed(pipe, device)


def _placed(pipe, device: torch.device):
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    pipe = pipe.to(device, dtype)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def timed(run, device: torch.device) -> tuple[float, float]:
    """Return (seconds, peak GiB) of ``run()``."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    return time.perf_counter() - started, peak


#: Classifier-free guidance scale of every row, both paths.
CFG_SCALE = 7.0


def batch_specs(model: str, side: int, batch: int, steps: int) -> list[JobSpec]:
    """Return ``batch`` one-image jobs of one batch key (``side`` pixels square, ``steps`` steps)."""
    return [
        JobSpec(
            job_id=f"b{index}", model=model,
            prompts=[WeightedPrompt(text=f"a lighthouse {index}", weight=1.0)], width=side, height=side,
            steps=steps, cfg_scale=CFG_SCALE, samples=1, seed=index + 1, sampler="K_EULER",
        )
        for index in range(batch)
    ]  # fmt: skip


def direct_call(warm, specs: list[JobSpec]) -> None:
    """Run ``specs`` as one plain diffusers call on ``warm``'s (tuned) pipeline: the scheduler,
    cfg, size, seeds and output type ``generate_batch`` uses, none of the service around it."""
    from worker.diffusion.schedulers import make_scheduler

    first = specs[0]
    pipe = warm.pipe
    pipe.scheduler = make_scheduler(first.sampler, warm.scheduler_config)
    with torch.inference_mode():
        pipe(
            [spec.prompts[0].text for spec in specs], width=first.width, height=first.height,
            num_inference_steps=first.steps, guidance_scale=first.cfg_scale, output_type="pil",
            generator=[torch.Generator("cpu").manual_seed(spec.seed) for spec in specs],
        )  # fmt: skip


def measure(warm, path: str, model: str, side: int, batch: int, steps: int) -> dict:
    """Time one call of ``batch`` images (after one warm-up call of that shape) on ``path``
    (``direct`` or ``worker batch``); an error of any kind is recorded in the row."""
    specs = batch_specs(model, side, batch, steps)
    if path == "direct":
        run = lambda: direct_call(warm, specs)  # noqa: E731
    else:
        run = lambda: warm.generate_batch([(spec, None) for spec in specs])  # noqa: E731
    row = {"model": model, "side": side, "batch": batch, "steps": steps, "cfg": CFG_SCALE, "path": path}
    try:
        timed(run, warm.device)
        seconds, peak = timed(run, warm.device)
    except Exception as error:  # noqa: BLE001 - recorded in the row: one failure must not lose the other rows
        if warm.device.type == "cuda":
            torch.cuda.empty_cache()
        return {**row, **error_fields(error)}
    return {
        **row,
        "seconds": round(seconds, 3),
        "it_per_s": round(steps / seconds, 2),
        "images_per_s": round(batch / seconds, 3),
        "peak_gib": round(peak, 2),
    }


def model_rows(model: str, args: argparse.Namespace, device: torch.device):
    """Yield ``model``'s rows, direct and worker batch alternating per batch size."""
    from worker.diffusion.pipelines import WarmPipeline

    side = args.side or SIDES[model]
    try:
        warm = WarmPipeline(build(model, device, args.tiny), device, compile_unet=args.compile)
    except Exception as error:  # noqa: BLE001 - e.g. out of memory while building: the next model may still fit
        yield {"model": model, "side": side, "path": "build", **error_fields(error)}
        return
    for batch in args.batches:
        for path in ("direct", "worker batch"):
            yield measure(warm, path, model, side, batch, args.steps)
    del warm
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    """Measure each model's rows; print and append each as it finishes."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["sd15", "sdxl"], choices=list(SIDES))
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 2, 4, 8, 16])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--side", type=int, help="image side, pixels (default: 512 SD 1.5, 1024 SDXL)")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="the embedded tiny models (checks the script)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the UNet (as LATENTQ_COMPILE)")
    parser.add_argument("--jsonl", type=Path, help="append each row here as it finishes")
    parser.add_argument("--json", type=Path, help="write every row here at the end")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench.gpu needs a CUDA device (or --device cpu to check the script)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    rows = []
    for model in args.models:
        for row in model_rows(model, args, device):
            rows.append({"benchmark": "gpu", "device": name, **row})
            append_row(args.jsonl, rows[-1])
            print(rows[-1], flush=True)
    write_result(args.json, {"benchmark": "gpu", "device": name, "torch": torch.__version__, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
