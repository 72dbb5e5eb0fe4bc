"""The embedded model: deterministic bytes, a complete tokenizer, every size from 64 to 1024."""

from __future__ import annotations

import hashlib

import pytest
import torch

from worker.diffusion.pipelines import WarmPipeline
from worker.diffusion.schedulers import SCHEDULERS, make_scheduler
from worker.embedded.models import build_tiny_model
from worker.embedded.tokenizer import build_tokenizer, bytes_to_unicode, learn_merges


def digest(directory):
    return {
        str(path.relative_to(directory)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(directory.rglob("*")) if path.is_file()
    }  # fmt: skip


@pytest.fixture(scope="module")
def pipeline(tiny_model):
    return WarmPipeline.load(str(tiny_model), "cpu")


def test_build_is_byte_for_byte_reproducible(tiny_model, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    assert digest(again) == digest(tiny_model)
    assert {"model_index.json", "unet/diffusion_pytorch_model.safetensors", "tokenizer/vocab.json",
            "tokenizer/merges.txt", "scheduler/scheduler_config.json"} <= set(digest(again))  # fmt: skip


def test_sdxl_build_is_reproducible_and_loads_as_sdxl(tiny_sdxl_model, tmp_path):
    again = build_tiny_model(tmp_path / "again", "tiny-sdxl")
    assert digest(again) == digest(tiny_sdxl_model)
    assert {"text_encoder_2/model.safetensors", "tokenizer_2/vocab.json"} <= set(digest(again))
    pipeline = WarmPipeline.load(str(again), "cpu")
    assert type(pipeline.pipe).__name__ == "StableDiffusionXLPipeline"
    assert pipeline.pipe.unet.config.addition_embed_type == "text_time"


def test_byte_map_covers_all_bytes():
    assert len(set(bytes_to_unicode().values())) == 256


def test_merges_are_learned_deterministically():
    words = ["lower", "lowest", "newer", "wider"] * 3
    assert learn_merges(words, 10) == learn_merges(list(reversed(words)), 10)


@pytest.mark.parametrize("text", ["a lighthouse at dusk", "Ünïcödé ✓ 灯台 🏮", "x" * 200, ""])
def test_tokenizer_handles_any_text_without_unknown_tokens(text):
    tokenizer = build_tokenizer()
    ids = tokenizer(text, truncation=True, max_length=77).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert len(ids) <= 77


def test_common_prompt_words_are_single_tokens():
    assert len(build_tokenizer()("lighthouse").input_ids) == 3


def test_loads_as_stable_diffusion_with_vae_factor_8(pipeline):
    assert type(pipeline.pipe).__name__ == "StableDiffusionPipeline"
    assert pipeline.pipe.vae_scale_factor == 8


@pytest.mark.parametrize("size", [(64, 64), (72, 200), (1024, 64), (64, 1024), (136, 88)])
def test_accepts_sizes_in_steps_of_8(pipeline, size):
    latents = torch.randn(1, 4, size[1] // 8, size[0] // 8)
    image = pipeline.pipe.vae.decode(latents).sample
    assert tuple(image.shape[-2:]) == (size[1], size[0])
    noise = pipeline.pipe.unet(latents, 10, encoder_hidden_states=torch.randn(1, 77, 32)).sample
    assert noise.shape == latents.shape


@pytest.mark.parametrize("sampler", sorted(SCHEDULERS))
def test_every_sampler_builds_from_the_model_config(pipeline, sampler):
    scheduler = make_scheduler(sampler, pipeline.scheduler_config)
    cls, options = SCHEDULERS[sampler]
    assert type(scheduler).__name__ == cls
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.get("use_karras_sigmas", False) is sampler.endswith("_KARRAS")
    assert all(scheduler.config[key] == value for key, value in options.items())
