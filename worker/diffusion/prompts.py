"""Prompt conditioning: weighted prompts blended, long prompts chunked (never silently truncated).

A job whose prompts are one positive and at most one negative, each within the text
encoder's 75-token window, goes to diffusers as plain strings, so it matches plain diffusers
exactly. Any other set is encoded here:

1. Each prompt is tokenized without truncation and split into windows of 75 tokens; each
   window is wrapped in BOS/EOS, padded to 77 and encoded; the windows' hidden states are
   concatenated along the sequence (as AUTOMATIC1111 and compel do). Every prompt of the job
   is padded with empty windows to the same count, so embeddings can be blended and paired.
2. Positive prompts are averaged weighted by their weights; negative ones by their absolute
   weights (weights are relative within a sign; weight 0 is ignored).
3. With no negative prompt the unconditional side is the empty prompt, or zeros for SDXL
   models configured to force zeros, exactly as diffusers does.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import torch

from latentq.contract import LoraWeight, WeightedPrompt
from worker.diffusion.flow_prompts import flow_conditioning, flow_prompt_arguments, is_flow_pipeline

#: Tokens of text per encoder window (77 positions less BOS and EOS).
WINDOW = 75

#: A prompt's conditioning: hidden states and, for SDXL-style pipelines, the pooled embedding.
Conditioning = tuple[torch.Tensor, torch.Tensor | None]


def _encoders(pipe: Any) -> list[tuple[Any, Any]]:
    """Return the pipeline's (tokenizer, text encoder) pairs, in diffusers' order."""
    pairs = [
        (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
        (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
    ]
    return [(tokenizer, encoder) for tokenizer, encoder in pairs if None not in (tokenizer, encoder)]


def _is_dual(pipe: Any) -> bool:
    """Whether the pipeline is SDXL-style: penultimate hidden states and a pooled embedding."""
    return getattr(pipe, "text_encoder_2", None) is not None


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    ids: list[int] = tokenizer(text, add_special_tokens=False, truncation=False, verbose=False).input_ids
    return ids


def plain_prompts(pipe: Any, prompts: list[WeightedPrompt]) -> tuple[str, str | None] | None:
    """Return (prompt, negative prompt) if diffusers can take ``prompts`` as plain strings, else None."""
    positive = [p for p in prompts if p.weight > 0]
    negative = [p for p in prompts if p.weight < 0]
    if len(positive) != 1 or len(negative) > 1:
        return None
    texts = [positive[0].text] + [p.text for p in negative]
    if any(len(_token_ids(tokenizer, text)) > WINDOW for tokenizer, _ in _encoders(pipe) for text in texts):
        return None
    return positive[0].text, negative[0].text if negative else None


def _windows(tokenizer: Any, text: str, count: int) -> torch.Tensor:
    """Return ``count`` windows of 77 token ids for ``text`` (padded with empty windows)."""
    ids = _token_ids(tokenizer, text)
    rows = []
    for index in range(count):
        chunk = ids[index * WINDOW : (index + 1) * WINDOW]
        row = [tokenizer.bos_token_id, *chunk, tokenizer.eos_token_id]
        rows.append(row + [tokenizer.pad_token_id] * (WINDOW + 2 - len(row)))
    return torch.tensor(rows)


def _window_count(pipe: Any, texts: list[str]) -> int:
    lengths = [len(_token_ids(tokenizer, text)) for tokenizer, _ in _encoders(pipe) for text in texts]
    return max(1, *((length + WINDOW - 1) // WINDOW for length in lengths))


def _encode(pipe: Any, text: str, count: int) -> Conditioning:
    """Return ``text``'s hidden states ``[1, 77 * count, dim]`` and, for SDXL, its pooled embedding."""
    dual = _is_dual(pipe)
    states, pooled = [], None
    for tokenizer, encoder in _encoders(pipe):
        windows = _windows(tokenizer, text, count).to(encoder.device)
        output = encoder(windows, output_hidden_states=dual)
        hidden = output.hidden_states[-2] if dual else output[0]
        if output[0].ndim == 2:  # a projecting encoder's pooled output: take the first window's
            pooled = output[0][:1]
        states.append(hidden.reshape(1, -1, hidden.shape[-1]))
    return torch.cat(states, dim=-1), pooled


def _blend(pipe: Any, prompts: list[tuple[str, float]], count: int) -> Conditioning:
    total = sum(weight for _, weight in prompts)
    encoded = [(_encode(pipe, text, count), weight / total) for text, weight in prompts]
    states = sum(state * share for (state, _), share in encoded)
    pooled = [p * share for (_, p), share in encoded if p is not None]
    return states, (sum(pooled) if pooled else None)  # type: ignore[return-value]


def prompt_arguments(pipe: Any, prompts: list[WeightedPrompt]) -> dict[str, Any]:
    """Return the conditioning keyword arguments of a diffusers text-to-image call for ``prompts``."""
    if is_flow_pipeline(pipe):
        return flow_prompt_arguments(pipe, prompts)
    plain = plain_prompts(pipe, prompts)
    if plain is not None:
        return {"prompt": plain[0], "negative_prompt": plain[1]}
    positive = [(p.text, p.weight) for p in prompts if p.weight > 0]
    negative = [(p.text, -p.weight) for p in prompts if p.weight < 0]
    count = _window_count(pipe, [text for text, _ in positive + negative] or [""])
    states, pooled = _blend(pipe, positive, count)
    if negative:
        negative_states, negative_pooled = _blend(pipe, negative, count)
    elif _is_dual(pipe) and getattr(pipe.config, "force_zeros_for_empty_prompt", False):
        negative_states = torch.zeros_like(states)
        negative_pooled = torch.zeros_like(pooled) if pooled is not None else None
    else:
        negative_states, negative_pooled = _encode(pipe, "", count)
    arguments = {"prompt_embeds": states, "negative_prompt_embeds": negative_states}
    if pooled is not None:
        arguments |= {"pooled_prompt_embeds": pooled, "negative_pooled_prompt_embeds": negative_pooled}
    return arguments


def conditioning(pipe: Any, prompts: list[WeightedPrompt], device: torch.device) -> dict[str, torch.Tensor]:
    """Return ``prompts``' conditioning as tensors, one row each (``prompt_embeds``,
    ``negative_prompt_embeds`` and, for SDXL, the pooled pair), exactly as a call with
    ``prompt_arguments`` would compute it: for jobs batched with others, whose rows are stacked."""
    if is_flow_pipeline(pipe):
        return flow_conditioning(pipe, prompts, device)
    arguments = prompt_arguments(pipe, prompts)
    if "prompt_embeds" in arguments:
        return {name: value for name, value in arguments.items() if value is not None}
    encoded = pipe.encode_prompt(
        prompt=arguments["prompt"], device=device, num_images_per_prompt=1, do_classifier_free_guidance=True,
        negative_prompt=arguments["negative_prompt"],
    )  # fmt: skip
    names = [
        "prompt_embeds",
        "negative_prompt_embeds",
        "pooled_prompt_embeds",
        "negative_pooled_prompt_embeds",
    ]
    return dict(zip(names, encoded, strict=False))


#: Prompt sets whose conditioning a ``ConditioningCache`` keeps (least recently used dropped first).
CACHE_ENTRIES = 64


class ConditioningCache:
    """The conditioning of recent prompt sets of one model, by (prompts, active LoRA adapters): a
    prompt seen again (a client's fixed prompt, the empty negative) is not tokenized or encoded
    again. An entry is exactly what ``conditioning`` computed, and a diffusers call given it runs
    the same arithmetic as one given the strings, so images are the same to the bit. Used by the
    one sampling thread only."""

    def __init__(self, entries: int = CACHE_ENTRIES) -> None:
        self.entries = entries
        self.cached: OrderedDict[tuple, dict[str, torch.Tensor]] = OrderedDict()

    def get(
        self, pipe: Any, prompts: list[WeightedPrompt], loras: list[LoraWeight], device: torch.device
    ) -> dict[str, torch.Tensor]:
        """Return ``prompts``' conditioning (``conditioning``'s tensors) with ``loras`` active,
        encoded now only if not cached. Call it in ``torch.inference_mode``."""
        # LoRA adapters may change the text encoders: their weights are part of the key.
        key = (tuple((p.text, p.weight) for p in prompts), tuple((lora.id, lora.weight) for lora in loras))
        if key in self.cached:
            self.cached.move_to_end(key)
            return self.cached[key]
        value = conditioning(pipe, prompts, device)
        self.cached[key] = value
        if len(self.cached) > self.entries:
            self.cached.popitem(last=False)
        return value
