"""Build the embedded safety checkers: diffusers' ``StableDiffusionSafetyChecker`` with a tiny CLIP
vision tower and seeded random weights, and its ``CLIPImageProcessor`` (32 x 32 inputs).

Random weights flag nothing in particular, so each checker's thresholds decide alone: a concept
scores its cosine similarity with the image (within [-1, 1]) minus its threshold, and an image is
flagged when any concept scores above 0. ``tiny-safety-all`` (thresholds -2) flags every image,
``tiny-safety-none`` (thresholds 2) none: tests of the service's safety modes are deterministic.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from worker.embedded.models import BUILD_SEED

#: Side of the checker's input images, pixels (the CLIP image processor resizes and crops to it).
INPUT_SIDE = 32


def write_safety_checker(folder: Path, threshold: float) -> None:
    """Write a tiny seeded safety checker whose every concept threshold is ``threshold`` to ``folder``."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(BUILD_SEED)
    tower = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(
        text_config={
            **tower,
            "vocab_size": 99,
            "max_position_embeddings": 77,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },  # the text tower is unused
        vision_config={**tower, "image_size": INPUT_SIDE, "patch_size": 4, "num_channels": 3},
        projection_dim=32,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    generator = torch.Generator().manual_seed(BUILD_SEED + 3)
    with torch.no_grad():
        for embeds in (checker.concept_embeds, checker.special_care_embeds):
            embeds.copy_(torch.randn(embeds.shape, generator=generator))
        checker.concept_embeds_weights.fill_(threshold)
        checker.special_care_embeds_weights.fill_(threshold)
    checker.save_pretrained(folder, safe_serialization=True)
    processor = CLIPImageProcessor(
        size={"shortest_edge": INPUT_SIDE}, crop_size={"height": INPUT_SIDE, "width": INPUT_SIDE}
    )
    processor.save_pretrained(folder)


#: Embedded safety checkers by the name an ``embedded:<name>`` source gives: each writes itself to a folder.
SAFETY_CHECKER_BUILDERS: dict[str, Callable[[Path], None]] = {
    "tiny-safety-all": lambda folder: write_safety_checker(folder, -2.0),
    "tiny-safety-none": lambda folder: write_safety_checker(folder, 2.0),
}
