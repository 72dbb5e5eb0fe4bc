"""Weight memory of FLUX.1-dev and SD3.5 Large in bf16, from their published configurations.

Each component is built on PyTorch's ``meta`` device (shapes, no storage: no download, no GPU, a
second on CPU) and its parameters counted; weights take 2 bytes each in bf16, the dtype the
worker loads these families in on CUDA. This is the floor of a worker's GPU memory for the model
(with and without SD3's optional T5: the registry's ``t5 = false``); the peak while sampling a
batch (activations, VAE decode) needs a GPU and ``bench.gpu``.

    .venv/bin/python -m bench.flow_weights [--json bench/results/flow_weights.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import torch

from bench import write_result

# The published configurations (each checkpoint's config.json, the fields that set a shape).
FLUX_DEV = {
    "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
    "guidance_embeds": True, "axes_dims_rope": (16, 56, 56),
}  # fmt: skip
SD35_LARGE = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 38,
    "attention_head_dim": 64, "num_attention_heads": 38, "joint_attention_dim": 4096,
    "caption_projection_dim": 2432, "pooled_projection_dim": 2048, "pos_embed_max_size": 192,
    "qk_norm": "rms_norm",
}  # fmt: skip
T5_XXL = {"d_model": 4096, "d_ff": 10240, "d_kv": 64, "num_heads": 64, "num_layers": 24, "vocab_size": 32128,
          "feed_forward_proj": "gated-gelu"}  # fmt: skip
CLIP_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "projection_dim": 768}  # fmt: skip
CLIP_G = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
          "num_attention_heads": 20, "projection_dim": 1280, "hidden_act": "gelu"}  # fmt: skip
VAE_16 = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 16, "layers_per_block": 2,
    "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4, "use_quant_conv": False, "use_post_quant_conv": False,
}  # fmt: skip
#: Bytes per weight in bf16.
BF16_BYTES = 2


def parameters(factory: Any, *args: Any, **config: Any) -> int:
    """Return the parameter count of ``factory(*args, **config)``, built on the meta device."""
    with torch.device("meta"):
        return sum(parameter.numel() for parameter in factory(*args, **config).parameters())


def components() -> dict[str, dict[str, int]]:
    """Return each model's components' parameter counts."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        T5Config,
        T5EncoderModel,
    )

    t5 = parameters(T5EncoderModel, T5Config(**T5_XXL))
    vae = parameters(AutoencoderKL, **VAE_16)
    return {
        "flux-dev": {"transformer": parameters(FluxTransformer2DModel, **FLUX_DEV),
                     "clip-l": parameters(CLIPTextModel, CLIPTextConfig(**CLIP_L)), "t5-xxl": t5, "vae": vae},
        "sd3.5-large": {"transformer": parameters(SD3Transformer2DModel, **SD35_LARGE),
                        "clip-l": parameters(CLIPTextModelWithProjection, CLIPTextConfig(**CLIP_L)),
                        "clip-g": parameters(CLIPTextModelWithProjection, CLIPTextConfig(**CLIP_G)),
                        "t5-xxl": t5, "vae": vae},
    }  # fmt: skip


def main() -> int:
    """Print each model's weights in bf16, GiB, by component and in total (SD3.5 also without T5)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args()
    result: dict[str, Any] = {"dtype": "bfloat16", "models": {}}
    for model, counts in components().items():
        gib = {name: count * BF16_BYTES / 2**30 for name, count in counts.items()}
        totals = {"all": sum(gib.values()), "without t5": sum(gib.values()) - gib["t5-xxl"]}
        result["models"][model] = {"parameters": counts, "gib": gib, "total_gib": totals}
        print(
            f"{model}: "
            + ", ".join(f"{name} {counts[name] / 1e9:.2f}B = {gib[name]:.2f} GiB" for name in counts)
        )
        print(f"  total {totals['all']:.2f} GiB, without T5 {totals['without t5']:.2f} GiB")
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
