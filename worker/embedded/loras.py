"""Build the embedded LoRA adapters: one tiny, deterministic adapter per embedded drawing model.

Each is a rank-4 LoRA (``peft.LoraConfig``) on the attention projections of its model's UNet and
first text encoder, with seeded random weights (a trained adapter would start with B = 0, which
changes nothing), saved in diffusers' LoRA format (``pytorch_lora_weights.safetensors``), so
``load_lora_weights`` loads it like any adapter from the hub.

Usage: ``python -m worker.embedded.loras DIR --name NAME`` (a name of ``LORA_BUILDERS``)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.embedded.models import BUILD_SEED, build_sd_pipeline, build_sdxl_pipeline

#: The file diffusers' ``load_lora_weights`` looks for in a folder.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: Rank of the embedded adapters (alpha is the same: scale 1 at weight 1).
LORA_RANK = 4
#: Standard deviation of the adapters' seeded weights: large enough to change the tiny model's image.
LORA_STD = 0.2
#: Layers the adapters change: attention projections of the UNet and of the CLIP text encoder.
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def seeded_adapter(
    model, targets: list[str], seed: int, rank: int = LORA_RANK, alpha: int | None = None
) -> dict:
    """Add a seeded LoRA of ``rank`` (and ``alpha``, default the rank) to ``model`` and return its
    weights in diffusers' LoRA key format."""
    import torch
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    config = LoraConfig(r=rank, lora_alpha=alpha or rank, target_modules=targets, init_lora_weights=False)
    model.add_adapter(config)
    generator = torch.Generator("cpu").manual_seed(seed)
    with torch.no_grad():
        for name, parameter in sorted(model.named_parameters()):
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * LORA_STD)
    return convert_state_dict_to_diffusers(get_peft_model_state_dict(model))


def build_sd_lora(directory: Path) -> None:
    """Write the ``tiny-sd`` adapter (UNet and text encoder) to ``directory``."""
    from diffusers import StableDiffusionPipeline

    pipe = build_sd_pipeline()
    StableDiffusionPipeline.save_lora_weights(
        directory,
        unet_lora_layers=seeded_adapter(pipe.unet, UNET_TARGETS, BUILD_SEED + 10),
        text_encoder_lora_layers=seeded_adapter(pipe.text_encoder, TEXT_TARGETS, BUILD_SEED + 11),
        weight_name=LORA_WEIGHT_NAME,
    )


def build_sdxl_lora(directory: Path) -> None:
    """Write the ``tiny-sdxl`` adapter (UNet and first text encoder) to ``directory``."""
    from diffusers import StableDiffusionXLPipeline

    pipe = build_sdxl_pipeline()
    StableDiffusionXLPipeline.save_lora_weights(
        directory,
        unet_lora_layers=seeded_adapter(pipe.unet, UNET_TARGETS, BUILD_SEED + 20),
        text_encoder_lora_layers=seeded_adapter(pipe.text_encoder, TEXT_TARGETS, BUILD_SEED + 21),
        weight_name=LORA_WEIGHT_NAME,
    )


#: Embedded adapters by the name an ``embedded:<name>`` source of a ``[[loras]]`` entry gives.
LORA_BUILDERS = {"tiny-sd-lora": build_sd_lora, "tiny-sdxl-lora": build_sdxl_lora}


def ensure_tiny_lora(directory: Path, name: str) -> Path:
    """Build embedded adapter ``name`` in ``directory`` unless it is already there; return the folder."""
    directory = Path(directory)
    if not (directory / LORA_WEIGHT_NAME).is_file():
        # Written aside and renamed: a half-written file is never taken for an adapter.
        staging = directory.with_name(directory.name + ".partial")
        LORA_BUILDERS[name](staging)
        directory.mkdir(parents=True, exist_ok=True)
        (staging / LORA_WEIGHT_NAME).replace(directory / LORA_WEIGHT_NAME)
        staging.rmdir()
    return directory


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m worker.embedded.loras DIR --name NAME``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="folder to write the adapter to")
    parser.add_argument("--name", choices=sorted(LORA_BUILDERS), default="tiny-sd-lora")
    args = parser.parse_args(argv)
    ensure_tiny_lora(args.directory, args.name)
    size = (args.directory / LORA_WEIGHT_NAME).stat().st_size
    print(f"embedded adapter {args.name} at {args.directory} ({size / 1e3:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
