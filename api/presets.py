"""Style presets: Stability's 17 ``style_preset`` names as prompt templates, kept in one data file.

A preset rewrites a job's prompts before it is queued, so the job record shows what ran:
each positive prompt's text is put into the preset's template (``{prompt}``), and the
preset's negative text is appended (", ") to every negative prompt, or becomes a negative
prompt of weight -1 when the request has none.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from latentq.contract import WeightedPrompt

#: The data file of presets: ``{name: {"prompt": template, "negative_prompt": text}}``.
PRESETS_FILE = Path(__file__).with_name("style_presets.json")


@cache
def style_presets() -> dict[str, dict[str, str]]:
    """Return every preset by name, read once from ``PRESETS_FILE``."""
    presets: dict[str, dict[str, str]] = json.loads(PRESETS_FILE.read_text())
    return presets


def apply_style(name: str, prompts: list[WeightedPrompt]) -> list[WeightedPrompt]:
    """Return ``prompts`` rewritten by preset ``name`` (which must exist)."""
    preset = style_presets()[name]
    template, negative = preset["prompt"], preset.get("negative_prompt", "")
    styled = [
        WeightedPrompt(text=template.replace("{prompt}", p.text), weight=p.weight)
        if p.weight >= 0
        else WeightedPrompt(text=f"{p.text}, {negative}" if negative else p.text, weight=p.weight)
        for p in prompts
    ]
    if negative and all(p.weight >= 0 for p in prompts):
        styled.append(WeightedPrompt(text=negative, weight=-1.0))
    return styled
