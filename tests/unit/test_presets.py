"""Style presets: Stability's 17 names, each a prompt template from one data file."""

from __future__ import annotations

from api.presets import apply_style, style_presets
from latentq.contract import WeightedPrompt as P

STABILITY_PRESETS = {
    "enhance", "anime", "photographic", "digital-art", "comic-book", "fantasy-art", "line-art",
    "analog-film", "neon-punk", "isometric", "low-poly", "origami", "modeling-compound", "cinematic",
    "3d-model", "pixel-art", "tile-texture",
}  # fmt: skip


def test_all_seventeen_presets_have_a_template():
    assert set(style_presets()) == STABILITY_PRESETS
    assert all("{prompt}" in preset["prompt"] for preset in style_presets().values())


def test_preset_templates_positive_prompts_and_adds_its_negative():
    styled = apply_style("anime", [P(text="a fox", weight=1.0), P(text="a moon", weight=0.5)])
    assert styled == [
        P(
            text="anime artwork a fox . anime style, key visual, vibrant, studio anime, highly detailed",
            weight=1.0,
        ),
        P(
            text="anime artwork a moon . anime style, key visual, vibrant, studio anime, highly detailed",
            weight=0.5,
        ),
        P(text="photo, deformed, black and white, realism, disfigured, low contrast", weight=-1.0),
    ]


def test_preset_negative_is_appended_to_existing_negative_prompts():
    styled = apply_style("tile-texture", [P(text="moss", weight=1.0), P(text="fog", weight=-0.7)])
    assert styled == [
        P(text="texture moss top down close-up", weight=1.0),
        P(text="fog, ugly, deformed, noisy, blurry", weight=-0.7),
    ]


def test_braces_in_user_text_are_kept_literally():
    [styled, _] = apply_style("enhance", [P(text="{x} {prompt}", weight=1.0)])
    assert styled.text.startswith("breathtaking {x} {prompt} . award-winning")
