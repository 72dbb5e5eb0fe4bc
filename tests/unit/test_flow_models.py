"""The embedded flow-matching models: the T5 unigram tokenizer, reproducible builds, their samplers."""

from __future__ import annotations

import hashlib

import pytest

from worker.embedded.models import build_tiny_model
from worker.embedded.t5_tokenizer import WORD_START, build_t5_tokenizer, unigram_vocab
from worker.embedded.tokenizer import _CORPUS


def digest(directory) -> str:
    hashed = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        hashed.update(str(path.relative_to(directory)).encode() + path.read_bytes())
    return hashed.hexdigest()


def test_unigram_vocabulary_is_counted_deterministically():
    vocab = unigram_vocab(_CORPUS)
    assert vocab == unigram_vocab(list(_CORPUS))
    assert [piece for piece, _ in vocab[:3]] == ["<pad>", "</s>", "<unk>"]
    assert len({piece for piece, _ in vocab}) == len(vocab)
    assert all(score < 0 for _, score in vocab[3:])


@pytest.mark.parametrize("text", ["a lighthouse at dusk", "Zebra #42, (ultra) {wide}!", ""])
def test_t5_tokenizer_reads_prompts_as_t5_does(text):
    tokenizer = build_t5_tokenizer()
    ids = tokenizer(text).input_ids
    assert ids[-1] == tokenizer.eos_token_id == 1 and tokenizer.pad_token_id == 0
    assert tokenizer.unk_token_id not in ids  # every ASCII character is a piece
    assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_common_prompt_words_are_single_pieces():
    tokenizer = build_t5_tokenizer()
    assert tokenizer.tokenize("lighthouse castle") == [WORD_START + "lighthouse", WORD_START + "castle"]


@pytest.mark.parametrize(
    ("name", "pipeline"), [("tiny-sd3", "StableDiffusion3Pipeline"), ("tiny-flux", "FluxPipeline")]
)
def test_builds_are_byte_for_byte_reproducible_and_load(tmp_path, name, pipeline):
    from diffusers import (
        AutoPipelineForText2Image,
        FlowMatchEulerDiscreteScheduler,
        FlowMatchHeunDiscreteScheduler,
    )

    from worker.diffusion.schedulers import make_scheduler

    first = build_tiny_model(tmp_path / "a", name)
    assert digest(first) == digest(build_tiny_model(tmp_path / "b", name))
    pipe = AutoPipelineForText2Image.from_pretrained(first)
    assert type(pipe).__name__ == pipeline and pipe.vae.config.latent_channels == 16
    assert pipe.vae_scale_factor == 8
    scheduler = make_scheduler("K_EULER", pipe.scheduler.config)
    assert type(scheduler) is FlowMatchEulerDiscreteScheduler and scheduler.config == pipe.scheduler.config
    assert type(make_scheduler("K_HEUN", pipe.scheduler.config)) is FlowMatchHeunDiscreteScheduler
