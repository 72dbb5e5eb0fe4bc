"""Prompt conditioning of the flow-matching families (SD3, FLUX): their own pipelines' encoders.

A job of one positive prompt (and, for SD3, at most one negative) goes to diffusers as plain
strings, so it matches plain diffusers exactly: each pipeline reads the prompt with its CLIP
encoders (their first 77 tokens, as diffusers does) and its T5 encoder (the first 256 tokens
for SD3, 512 for FLUX). Weighted prompts are each encoded by the pipeline's ``encode_prompt``
and averaged by weight (hidden states and pooled embeddings; negatives by absolute weight), as
``worker.diffusion.prompts`` does for the UNet families. FLUX has no negative prompt (the API
refuses one).
"""

from __future__ import annotations

from typing import Any

import torch

from latentq.contract import WeightedPrompt


def is_flow_pipeline(pipe: Any) -> bool:
    """Whether ``pipe`` is a flow-matching transformer pipeline (SD3 or FLUX)."""
    return getattr(pipe, "transformer", None) is not None


def _has_negative(pipe: Any) -> bool:
    """Whether the pipeline takes a negative prompt (SD3 does; FLUX, guided by an embedding, not)."""
    return "text_encoder_3" in pipe.components  # SD3's, even when loaded without its T5 (None)


def _encode(pipe: Any, text: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``text``'s (hidden states, pooled embedding), one row, as the pipeline computes them."""
    if _has_negative(pipe):
        states, _, pooled, _ = pipe.encode_prompt(
            prompt=text, prompt_2=None, prompt_3=None, device=device, do_classifier_free_guidance=False
        )
        return states, pooled
    states, pooled, _text_ids = pipe.encode_prompt(prompt=text, prompt_2=None, device=device)
    return states, pooled


def _blend(
    pipe: Any, prompts: list[tuple[str, float]], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    total = sum(weight for _, weight in prompts)
    encoded = [(_encode(pipe, text, device), weight / total) for text, weight in prompts]
    states = sum(state * share for (state, _), share in encoded)
    pooled = sum(pool * share for (_, pool), share in encoded)
    return states, pooled  # type: ignore[return-value]


def flow_prompt_arguments(pipe: Any, prompts: list[WeightedPrompt]) -> dict[str, Any]:
    """Return the conditioning keyword arguments of an SD3 or FLUX call for ``prompts``."""
    positive = [(p.text, p.weight) for p in prompts if p.weight > 0]
    negative = [(p.text, -p.weight) for p in prompts if p.weight < 0]
    takes_negative = _has_negative(pipe)
    if len(positive) == 1 and len(negative) <= (1 if takes_negative else 0):
        arguments: dict[str, Any] = {"prompt": positive[0][0]}
        if takes_negative:
            arguments["negative_prompt"] = negative[0][0] if negative else None
        return arguments
    return flow_conditioning(pipe, prompts, pipe._execution_device)


def flow_conditioning(
    pipe: Any, prompts: list[WeightedPrompt], device: torch.device
) -> dict[str, torch.Tensor]:
    """Return ``prompts``' conditioning tensors, one row each (``prompt_embeds``,
    ``pooled_prompt_embeds`` and, for SD3, the negative pair), as the pipeline would compute them
    from ``flow_prompt_arguments``: for jobs batched with others, whose rows are stacked."""
    positive = [(p.text, p.weight) for p in prompts if p.weight > 0]
    negative = [(p.text, -p.weight) for p in prompts if p.weight < 0]
    states, pooled = _blend(pipe, positive, device)
    arguments = {"prompt_embeds": states, "pooled_prompt_embeds": pooled}
    if _has_negative(pipe):
        # diffusers' SD3 reads a missing negative prompt as the empty one.
        negative_states, negative_pooled = _blend(pipe, negative or [("", 1.0)], device)
        arguments["negative_prompt_embeds"] = negative_states
        arguments["negative_pooled_prompt_embeds"] = negative_pooled
    return arguments
