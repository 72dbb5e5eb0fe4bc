"""Build the embedded flow-matching models: tiny, randomly initialised SD3 and FLUX pipelines.

Shaped like diffusers' own tests' tiny configurations, made a little more like the published
models where it costs nothing: a VAE with spatial factor 8 and 16 latent channels, SD3's
patch size 2 and FLUX's 2x2 latent packing (64 transformer input channels), FLUX's guidance
embedding, the published scheduler configurations. Text encoders: the embedded CLIP tokenizer
and tiny CLIP encoders (``worker.embedded.models``), and a tiny T5 encoder with the locally
counted unigram tokenizer (``worker.embedded.t5_tokenizer``). Every initialisation is seeded.
"""

from __future__ import annotations

from worker.embedded.models import BUILD_SEED, _tiny_text_encoder
from worker.embedded.t5_tokenizer import build_t5_tokenizer
from worker.embedded.tokenizer import build_tokenizer

#: Latent channels of the SD3 and FLUX VAEs.
LATENT_CHANNELS = 16
#: Width of the tiny T5 encoder's hidden states (the transformers' joint attention input).
T5_WIDTH = 64


def _flow_vae(scaling_factor: float, shift_factor: float):  # -> AutoencoderKL
    """Return a four-level VAE (spatial factor 8) with 16 latent channels and no quant convs, as
    SD3's and FLUX's have, with their latent ``scaling_factor`` and ``shift_factor``."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(BUILD_SEED)
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32,) * 4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=LATENT_CHANNELS, layers_per_block=1, norm_num_groups=32, sample_size=512,
        use_quant_conv=False, use_post_quant_conv=False, scaling_factor=scaling_factor,
        shift_factor=shift_factor,
    )  # fmt: skip


def _tiny_t5(tokenizer):  # -> T5EncoderModel
    import torch
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    torch.manual_seed(BUILD_SEED + 2)
    return T5EncoderModel(config)


def _seeded_clip(tokenizer, seed: int, with_projection: bool):  # -> CLIPTextModel(WithProjection)
    import torch

    torch.manual_seed(seed)
    return _tiny_text_encoder(tokenizer, with_projection=with_projection)


def build_sd3_pipeline():  # -> StableDiffusion3Pipeline
    """Return the tiny SD3-shaped pipeline: two projecting CLIP encoders (hidden states and pooled
    embeddings concatenated), a T5 encoder, an MMDiT with patch size 2, flow-matching Euler."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    torch.manual_seed(BUILD_SEED)
    transformer = SD3Transformer2DModel(
        sample_size=32, patch_size=2, in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
        num_layers=2, attention_head_dim=8, num_attention_heads=4, caption_projection_dim=32,
        # The CLIP hidden states (32 + 32) are padded to T5's width; the pooled ones concatenated.
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=64, pos_embed_max_size=96,
    )  # fmt: skip
    t5_tokenizer = build_t5_tokenizer()
    return StableDiffusion3Pipeline(
        transformer=transformer,
        # SD3's scheduler configuration.
        scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0),
        vae=_flow_vae(scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_seeded_clip(build_tokenizer(), BUILD_SEED, with_projection=True),
        tokenizer=build_tokenizer(),
        text_encoder_2=_seeded_clip(build_tokenizer(), BUILD_SEED + 1, with_projection=True),
        tokenizer_2=build_tokenizer(),
        text_encoder_3=_tiny_t5(t5_tokenizer),
        tokenizer_3=t5_tokenizer,
    )


def build_flux_pipeline():  # -> FluxPipeline
    """Return the tiny FLUX.1-dev-shaped pipeline: a CLIP encoder (pooled output), a T5 encoder,
    double- and single-stream blocks, a guidance embedding, 2x2-packed latents."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(BUILD_SEED)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=LATENT_CHANNELS * 4, num_layers=1, num_single_layers=1,
        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=T5_WIDTH,
        pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8),
    )  # fmt: skip
    # FLUX.1-dev's scheduler configuration: the shift grows with the image's token count.
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )  # fmt: skip
    t5_tokenizer = build_t5_tokenizer()
    return FluxPipeline(
        scheduler=scheduler,
        vae=_flow_vae(scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_seeded_clip(build_tokenizer(), BUILD_SEED, with_projection=False),
        tokenizer=build_tokenizer(),
        text_encoder_2=_tiny_t5(t5_tokenizer),
        tokenizer_2=t5_tokenizer,
        transformer=transformer,
    )
