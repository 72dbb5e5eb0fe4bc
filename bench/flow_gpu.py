"""GPU memory and speed of FLUX.1-dev and SD3.5 Large in bf16, from their published configurations.

No weights can be downloaded, and the cost of a network does not depend on its weight values, so
each model's components are built from the configurations ``bench.flow_weights`` holds (the
checkpoints' config.json) with random weights, in bf16 directly on the device. They are built
inside ``torch.device(device)`` rather than on ``meta`` and then materialised with ``to_empty``:
``to_empty`` leaves buffers such as CLIP's ``position_ids`` (not in any state dict) as garbage,
and a garbage index is a device-side assert that ends the whole process. ``bench.flow_weights``
counts the same parameters on ``meta`` without a GPU.

For each model: the weights' GiB per component (allocated after building), then one prompt
encoding (CLIP, and T5 at the pipelines' default lengths: 512 tokens FLUX, 256 SD3), ``--steps``
transformer calls at ``--side`` (1024 by default; SD3 with classifier-free guidance, so two rows
a call, FLUX with its guidance embedding, one) and one VAE decode, each timed; the peak memory of
the whole run. One row per model appended to ``--jsonl`` as it finishes; an error of any kind
(out of memory where a model does not fit) is recorded in its row and the next model still runs.

    .venv/bin/python -m bench.flow_gpu [--models flux-dev sd3.5-large] [--steps 2] [--side 1024]
        [--no-encoders] [--jsonl bench/results/flow_gpu.jsonl]

It needs a CUDA device; ``--device cpu --tiny --side 64`` checks the script with tiny configurations.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bench import append_row, error_fields
from bench.flow_weights import CLIP_G, CLIP_L, FLUX_DEV, SD35_LARGE, T5_XXL, VAE_16

#: Configurations of the same shape as the published ones, small enough for a CPU (``--tiny``).
TINY = {
    "flux": {**FLUX_DEV, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
             "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
             "axes_dims_rope": (4, 6, 6)},
    "sd3": {**SD35_LARGE, "num_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
            "joint_attention_dim": 32, "caption_projection_dim": 32, "pooled_projection_dim": 32,
            "pos_embed_max_size": 32},
    "t5": {**T5_XXL, "d_model": 32, "d_ff": 64, "d_kv": 8, "num_heads": 4, "num_layers": 1},
    "clip": {**CLIP_L, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2, "projection_dim": 16},
    "vae": {**VAE_16, "block_out_channels": (32, 32), "down_block_types": ("DownEncoderBlock2D",) * 2,
            "up_block_types": ("UpDecoderBlock2D",) * 2, "layers_per_block": 1, "norm_num_groups": 8},
}  # fmt: skip
#: Prompt tokens of T5 in each pipeline's default call (``max_sequence_length``), and of CLIP.
T5_TOKENS = {"flux-dev": 512, "sd3.5-large": 256}
CLIP_TOKENS = 77


def configurations(model: str, tiny: bool) -> dict[str, Any]:
    """Return ``model``'s component configurations: transformer, encoders by name, VAE."""
    if model == "flux-dev":
        encoders = {"clip-l": CLIP_L, "t5-xxl": T5_XXL}
        transformer = TINY["flux"] if tiny else FLUX_DEV
    else:
        encoders = {"clip-l": CLIP_L, "clip-g": CLIP_G, "t5-xxl": T5_XXL}
        transformer = TINY["sd3"] if tiny else SD35_LARGE
    if tiny:
        encoders = {name: TINY["t5"] if name == "t5-xxl" else TINY["clip"] for name in encoders}
    return {"transformer": transformer, "encoders": encoders, "vae": TINY["vae"] if tiny else VAE_16}


def built(
    factory: Callable[[], torch.nn.Module], device: torch.device, dtype: torch.dtype
) -> torch.nn.Module:
    """Return ``factory()`` built on ``device`` with ``dtype`` as the default dtype (random weights)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return factory().to(device, dtype).eval()
    finally:
        torch.set_default_dtype(default)


def synchronized_seconds(run: Callable[[], Any], device: torch.device) -> float:
    """Return the seconds ``run()`` takes, the device's queue drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def allocated_gib(device: torch.device) -> float:
    """Return the memory PyTorch has allocated on ``device`` now, GiB (0 off CUDA)."""
    return torch.cuda.memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0


def encoder_seconds(model: str, configs: dict, device: torch.device, dtype: torch.dtype, row: dict) -> list:
    """Build and run each text encoder once; record GiB and seconds in ``row``; return the modules."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    kept = []
    for name, config in configs["encoders"].items():
        before = allocated_gib(device)
        if name == "t5-xxl":
            encoder = built(lambda c=config: T5EncoderModel(T5Config(**c)), device, dtype)
            tokens = torch.randint(0, config["vocab_size"], (1, T5_TOKENS[model]), device=device)
        else:
            encoder = built(lambda c=config: CLIPTextModelWithProjection(CLIPTextConfig(**c)), device, dtype)
            tokens = torch.randint(0, config["vocab_size"], (1, CLIP_TOKENS), device=device)
        row["weights_gib"][name] = round(allocated_gib(device) - before, 2)
        with torch.inference_mode():
            row["seconds"][name] = round(synchronized_seconds(lambda e=encoder, t=tokens: e(t), device), 3)
        kept.append(encoder)
    return kept


def transformer_inputs(model: str, config: dict, side: int, device: torch.device, dtype: torch.dtype) -> dict:
    """Return one denoising call's random inputs for ``model``'s transformer at ``side`` pixels."""
    latent = side // 8  # the VAE's scale factor
    rows = 1 if model == "flux-dev" else 2  # SD3: a conditional and an unconditional row (cfg)
    text = torch.randn(rows, T5_TOKENS[model] + (0 if model == "flux-dev" else CLIP_TOKENS),
                       config["joint_attention_dim"], device=device, dtype=dtype)  # fmt: skip
    pooled = torch.randn(rows, config["pooled_projection_dim"], device=device, dtype=dtype)
    timestep = torch.full((rows,), 0.5 if model == "flux-dev" else 500.0, device=device, dtype=dtype)
    if model != "flux-dev":
        hidden = torch.randn(rows, 16, latent, latent, device=device, dtype=dtype)
        return {"hidden_states": hidden, "encoder_hidden_states": text, "pooled_projections": pooled,
                "timestep": timestep}  # fmt: skip
    tokens = (latent // 2) ** 2  # FLUX packs 2x2 latent patches of 16 channels into one token of 64
    image_ids = torch.zeros(latent // 2, latent // 2, 3, device=device)
    image_ids[..., 1] += torch.arange(latent // 2, device=device)[:, None]
    image_ids[..., 2] += torch.arange(latent // 2, device=device)[None, :]
    return {"hidden_states": torch.randn(rows, tokens, 64, device=device, dtype=dtype),
            "encoder_hidden_states": text, "pooled_projections": pooled, "timestep": timestep,
            "img_ids": image_ids.reshape(tokens, 3), "txt_ids": torch.zeros(text.shape[1], 3, device=device),
            "guidance": torch.full((rows,), 3.5, device=device, dtype=torch.float32)}  # fmt: skip


def measure_model(model: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Build ``model`` on ``device`` in bf16 and run it; return its row (an error recorded in it)."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel

    dtype = torch.bfloat16
    configs = configurations(model, args.tiny)
    row: dict[str, Any] = {"benchmark": "flow_gpu", "model": model, "side": args.side, "steps": args.steps,
                           "dtype": "bfloat16", "weights_gib": {}, "seconds": {}}  # fmt: skip
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    modules: list[Any] = []  # every component stays alive until the row is complete
    try:
        if args.encoders:
            modules += encoder_seconds(model, configs, device, dtype, row)
        factory = FluxTransformer2DModel if model == "flux-dev" else SD3Transformer2DModel
        before = allocated_gib(device)
        transformer = built(lambda: factory(**configs["transformer"]), device, dtype)
        vae = built(lambda: AutoencoderKL(**configs["vae"]), device, dtype)
        modules += [transformer, vae]
        row["weights_gib"]["transformer+vae"] = round(allocated_gib(device) - before, 2)
        inputs = transformer_inputs(model, configs["transformer"], args.side, device, dtype)
        with torch.inference_mode():
            transformer(**inputs)  # the first call pays for kernel selection: not timed
            total = synchronized_seconds(lambda: [transformer(**inputs) for _ in range(args.steps)], device)
            row["seconds_per_step"] = round(total / args.steps, 4)
            latents = torch.randn(1, 16, args.side // 8, args.side // 8, device=device, dtype=dtype)
            row["seconds"]["vae decode"] = round(synchronized_seconds(lambda: vae.decode(latents), device), 3)
    except Exception as error:  # noqa: BLE001 - recorded: e.g. out of memory where the model does not fit
        row.update(error_fields(error))
    if device.type == "cuda":
        row["peak_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return row


def main(argv: list[str] | None = None) -> int:
    """Measure each model; print and append its row."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(T5_TOKENS), choices=list(T5_TOKENS))
    parser.add_argument("--steps", type=int, default=2, help="timed transformer calls")
    parser.add_argument("--side", type=int, default=1024, help="image side, pixels")
    parser.add_argument(
        "--no-encoders", dest="encoders", action="store_false", help="transformer and VAE only"
    )
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configurations (checks the script)")
    parser.add_argument("--jsonl", type=Path, help="append each row here as it finishes")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench.flow_gpu needs a CUDA device (or --device cpu --tiny)", file=sys.stderr)
        return 2
    for model in args.models:
        row = measure_model(model, args, device)
        if device.type == "cuda":  # the model's tensors died with measure_model's frame: give them back
            torch.cuda.empty_cache()
        row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        append_row(args.jsonl, row)
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
