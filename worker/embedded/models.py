"""Build the embedded models: tiny, randomly initialised Stable Diffusion pipelines.

No model hub is reachable where latentq is developed and tested, so the worker ships
builders for structurally real checkpoints that ``from_pretrained`` loads like any other:
``tiny-sd`` (SD 1.x: UNet with cross-attention, a VAE with scale factor 8, a CLIP text
encoder and a complete byte-level CLIP tokenizer) and ``tiny-sdxl`` (SDXL: two text
encoders, pooled-text and size micro-conditioning), ``tiny-sd-inpainting`` (a 9-channel
inpainting UNet) and ``tiny-x4-upscaler`` (an x4 diffusion upscaler); ``tiny-sd3`` and ``tiny-flux``
come from ``worker.embedded.flow_models``, the safety checkers ``tiny-safety-all`` and
``tiny-safety-none`` from ``worker.embedded.safety_checkers``. Their weights are random: they draw
noise. The same bytes come out on every run, so their images are reproducible anywhere.

Usage: ``python -m worker.embedded DIR [--name NAME]`` (a name of ``BUILDERS``)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from worker.embedded.tokenizer import build_tokenizer, write_slow_tokenizer_files

#: Seed for every random initialisation in the builder.
BUILD_SEED = 0
#: Marker file written last, so a half-written folder is never mistaken for a model.
COMPLETE_MARKER = "model_index.json"


def _tiny_vae(blocks: int = 4, **config):  # -> AutoencoderKL
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        # Four blocks give the SD VAE's spatial factor of 2**3 = 8 (three: the x4 upscaler's 4).
        block_out_channels=(32,) * blocks,
        down_block_types=("DownEncoderBlock2D",) * blocks,
        up_block_types=("UpDecoderBlock2D",) * blocks,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
        sample_size=512,
        **config,
    )


def _tiny_unet(**architecture):  # -> UNet2DConditionModel
    """Return a two-level UNet (one plain, one cross-attention block); ``architecture`` adds or overrides."""
    from diffusers import UNet2DConditionModel

    config = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "norm_num_groups": 32,
    }
    return UNet2DConditionModel(**(config | architecture))


def _tiny_text_encoder(tokenizer, with_projection: bool = False):  # -> CLIPTextModel(WithProjection)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=77,
        projection_dim=32,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModelWithProjection(config) if with_projection else CLIPTextModel(config)


def build_sd_pipeline():  # -> StableDiffusionPipeline
    """Return the tiny SD 1.x-shaped pipeline with seeded random weights (fp32, CPU)."""
    import torch
    from diffusers import PNDMScheduler

    tokenizer = build_tokenizer()
    torch.manual_seed(BUILD_SEED)
    unet = _tiny_unet(cross_attention_dim=32, attention_head_dim=8)
    torch.manual_seed(BUILD_SEED)
    vae = _tiny_vae()
    torch.manual_seed(BUILD_SEED)
    text_encoder = _tiny_text_encoder(tokenizer)
    # The scheduler configuration of Stable Diffusion 1.5.
    scheduler = PNDMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        set_alpha_to_one=False,
        skip_prk_steps=True,
        steps_offset=1,
    )
    return sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler)


def sd_pipeline(vae, text_encoder, tokenizer, unet, scheduler):  # -> StableDiffusionPipeline
    """Return an SD 1.x ``StableDiffusionPipeline`` of these components, with no safety checker."""
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip


def sdxl_scheduler():  # -> EulerDiscreteScheduler
    """Return the scheduler configuration of SDXL 1.0 base."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )


def build_sdxl_pipeline():  # -> StableDiffusionXLPipeline
    """Return the tiny SDXL-shaped pipeline: two text encoders (one projecting the pooled output
    that SDXL's "text_time" micro-conditioning consumes), linear-projection attention."""
    import torch
    from diffusers import StableDiffusionXLPipeline

    tokenizer = build_tokenizer()
    torch.manual_seed(BUILD_SEED)
    unet = _tiny_unet(
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        # Six micro-conditioning values of 8 dims each, plus the 32-dim pooled text embedding.
        projection_class_embeddings_input_dim=6 * 8 + 32,
        # The two encoders' hidden states (32 + 32) are concatenated.
        cross_attention_dim=64,
    )
    torch.manual_seed(BUILD_SEED)
    vae = _tiny_vae()
    torch.manual_seed(BUILD_SEED)
    text_encoder = _tiny_text_encoder(tokenizer)
    torch.manual_seed(BUILD_SEED + 1)
    text_encoder_2 = _tiny_text_encoder(tokenizer, with_projection=True)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=build_tokenizer(),
        unet=unet,
        scheduler=sdxl_scheduler(),
        force_zeros_for_empty_prompt=True,
    )


def build_sd_inpainting_pipeline():  # -> StableDiffusionInpaintPipeline
    """Return a tiny dedicated inpainting checkpoint: the SD 1.x UNet with 9 input channels
    (latents, the masked image's latents, the mask), as SD's inpainting models have."""
    import torch
    from diffusers import StableDiffusionInpaintPipeline

    base = build_sd_pipeline()
    torch.manual_seed(BUILD_SEED)
    unet = _tiny_unet(in_channels=9, cross_attention_dim=32, attention_head_dim=8)
    return StableDiffusionInpaintPipeline(**{**base.components, "unet": unet})


def build_x4_upscaler_pipeline():  # -> StableDiffusionUpscalePipeline
    """Return a tiny x4 diffusion upscaler shaped like ``stable-diffusion-x4-upscaler``: a UNet fed the
    latents and the low-resolution image (7 channels) with a noise-level class embedding, a VAE
    with spatial factor 4, v-prediction DDIM sampling."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, StableDiffusionUpscalePipeline

    tokenizer = build_tokenizer()
    torch.manual_seed(BUILD_SEED)
    unet = _tiny_unet(in_channels=7, cross_attention_dim=32, attention_head_dim=8, num_class_embeds=1000)
    torch.manual_seed(BUILD_SEED)
    vae = _tiny_vae(blocks=3, scaling_factor=0.08333)
    torch.manual_seed(BUILD_SEED)
    text_encoder = _tiny_text_encoder(tokenizer)
    # The x4 upscaler's schedulers.
    scheduler = DDIMScheduler(
        beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear", prediction_type="v_prediction"
    )
    low_res_scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="scaled_linear")
    return StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        low_res_scheduler=low_res_scheduler, max_noise_level=350,
    )  # fmt: skip


def _tiny_controlnet(**architecture):  # -> ControlNetModel
    """Return a tiny ControlNet shaped like ``_tiny_unet``'s encoder (``architecture`` adds or
    overrides), seeded. diffusers zero-initialises a ControlNet's output convolutions; they are
    drawn at random here, or the control image would change nothing."""
    import torch
    from diffusers import ControlNetModel

    torch.manual_seed(BUILD_SEED)
    config = {
        "in_channels": 4, "block_out_channels": (32, 64), "layers_per_block": 1, "norm_num_groups": 32,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "conditioning_embedding_out_channels": (16, 32, 96, 256),
    }  # fmt: skip
    controlnet = ControlNetModel(**(config | architecture))
    zeroed = [controlnet.controlnet_cond_embedding.conv_out, *controlnet.controlnet_down_blocks,
              controlnet.controlnet_mid_block]  # fmt: skip
    generator = torch.Generator().manual_seed(BUILD_SEED + 2)
    with torch.no_grad():
        for layer in zeroed:
            layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * 0.05)
    return controlnet


def build_sd_controlnet():  # -> ControlNetModel
    """Return the tiny ControlNet of ``tiny-sd``: its UNet's encoder, a small control-image embedding."""
    return _tiny_controlnet(cross_attention_dim=32, attention_head_dim=8)


def build_sdxl_controlnet():  # -> ControlNetModel
    """Return the tiny ControlNet of ``tiny-sdxl``: its UNet's encoder, with SDXL's micro-conditioning."""
    return _tiny_controlnet(
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32, cross_attention_dim=64,
    )  # fmt: skip


#: Embedded ControlNets (``ControlNetModel``, not pipelines) by the name an ``embedded:<name>`` source gives.
CONTROLNET_BUILDERS = {
    "tiny-sd-controlnet": build_sd_controlnet,
    "tiny-sdxl-controlnet": build_sdxl_controlnet,
}

#: Embedded models by the name an ``embedded:<name>`` source gives.
BUILDERS = {
    "tiny-sd": build_sd_pipeline,
    "tiny-sdxl": build_sdxl_pipeline,
    "tiny-sd-inpainting": build_sd_inpainting_pipeline,
    "tiny-x4-upscaler": build_x4_upscaler_pipeline,
}


#: Embedded safety checkers (``worker.embedded.safety_checkers``), by name: each writes itself to a folder.
SAFETY_CHECKER_BUILDERS: dict = {}


def _flow_builders() -> None:
    """Register the flow-matching builders and the safety checkers (their own modules, which import
    this one)."""
    from worker.embedded.flow_models import build_flux_pipeline, build_sd3_pipeline
    from worker.embedded.safety_checkers import SAFETY_CHECKER_BUILDERS as checkers

    BUILDERS.update({"tiny-sd3": build_sd3_pipeline, "tiny-flux": build_flux_pipeline})
    SAFETY_CHECKER_BUILDERS.update(checkers)


_flow_builders()


def build_tiny_model(directory: Path, name: str = "tiny-sd") -> Path:
    """Write embedded model ``name`` to ``directory`` (created if needed) and return it."""
    directory = Path(directory)
    staging = directory.with_name(directory.name + ".partial")
    if name in CONTROLNET_BUILDERS:
        CONTROLNET_BUILDERS[name]().save_pretrained(staging, safe_serialization=True)
        # A lone model has no model_index.json: the marker says the folder is complete.
        (staging / COMPLETE_MARKER).write_text('{"_class_name": "ControlNetModel"}\n')
    elif name in SAFETY_CHECKER_BUILDERS:
        SAFETY_CHECKER_BUILDERS[name](staging)
        (staging / COMPLETE_MARKER).write_text('{"_class_name": "StableDiffusionSafetyChecker"}\n')
    else:
        pipeline = BUILDERS[name]()
        pipeline.save_pretrained(staging, safe_serialization=True)
        for folder in ("tokenizer", "tokenizer_2"):
            # CLIP tokenizers only: FLUX's tokenizer_2 is a T5 one, complete in its tokenizer.json.
            if (staging / folder).is_dir() and type(getattr(pipeline, folder)).__name__.startswith("CLIP"):
                write_slow_tokenizer_files(pipeline.tokenizer, staging / folder)
    # model_index.json moves last: its presence means the folder is complete.
    directory.mkdir(parents=True, exist_ok=True)
    for path in sorted(staging.rglob("*"), key=lambda p: p.name == COMPLETE_MARKER):
        if path.is_file():
            target = directory / path.relative_to(staging)
            target.parent.mkdir(parents=True, exist_ok=True)
            path.replace(target)
    _remove_tree(staging)
    return directory


def _remove_tree(path: Path) -> None:
    for child in sorted(path.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        child.rmdir() if child.is_dir() else child.unlink()
    path.rmdir()


def is_complete(directory: Path) -> bool:
    """Return whether ``directory`` holds a fully written model."""
    return (Path(directory) / COMPLETE_MARKER).is_file()


def ensure_tiny_model(directory: Path, name: str = "tiny-sd") -> Path:
    """Build embedded model ``name`` in ``directory`` unless it is already there."""
    if not is_complete(directory):
        build_tiny_model(directory, name)
    return Path(directory)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point: ``python -m worker.embedded DIR [--name NAME] [--force]``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="folder to write the model to")
    names = sorted([*BUILDERS, *CONTROLNET_BUILDERS, *SAFETY_CHECKER_BUILDERS])
    parser.add_argument("--name", choices=names, default="tiny-sd", help="which embedded model")
    parser.add_argument("--force", action="store_true", help="rebuild even if it exists")
    args = parser.parse_args(argv)
    if args.force or not is_complete(args.directory):
        build_tiny_model(args.directory, args.name)
    files = sorted(p for p in args.directory.rglob("*") if p.is_file())
    size = sum(p.stat().st_size for p in files)
    print(f"embedded model {args.name} at {args.directory} ({len(files)} files, {size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
