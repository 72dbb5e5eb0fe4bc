"""Safety checkers in the registry: ``[[safety_checkers]]`` tables, and which one each model uses.

A model's ``safety`` is ``off`` (its images are not checked), ``flag`` (each image is checked and
marked ``nsfw``, pixels untouched) or ``filter`` (a flagged image is replaced by a black one and
marked ``filtered``); a model that does not say gets the deployment's ``LATENTQ_SAFETY`` (default
``off``). A checked model's checker is its ``safety_checker``, else ``LATENTQ_SAFETY_CHECKER``, else
the registry's first ``[[safety_checkers]]`` table. The worker runs the checker after decoding, on
every image of a pipeline call at once (``worker.safety``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from latentq.models import EMBEDDED_PREFIX, MODEL_ID_PATTERN, SafetyMode

__all__ = ["SafetyCheckerSpec", "SafetyMode", "read_safety_checkers"]


class SafetyCheckerSpec(BaseModel):
    """One ``[[safety_checkers]]`` registry entry: an image classifier with the interface of
    diffusers' ``StableDiffusionSafetyChecker``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=MODEL_ID_PATTERN, description="Id a model's safety_checker names.")
    name: str = ""
    description: str = ""
    #: A folder (or hub id) holding a ``StableDiffusionSafetyChecker`` and its ``CLIPImageProcessor``
    #: (``config.json`` and ``preprocessor_config.json``, as ``CompVis/stable-diffusion-safety-checker``;
    #: or an SD pipeline folder's ``safety_checker/`` and ``feature_extractor/``), or ``embedded:<name>``.
    source: str = Field(min_length=1)

    @property
    def embedded_name(self) -> str | None:
        """The embedded checker's name when ``source`` is ``embedded:<name>``, else None."""
        return self.source.removeprefix(EMBEDDED_PREFIX) if self.source.startswith(EMBEDDED_PREFIX) else None


def read_safety_checkers(path: Path) -> tuple[SafetyCheckerSpec, ...]:
    """Return the ``[[safety_checkers]]`` entries of a registry TOML file."""
    with open(path, "rb") as file:
        entries = tomllib.load(file).get("safety_checkers", [])
    return tuple(SafetyCheckerSpec.model_validate(entry) for entry in entries)
