"""LoRA adapters in the registry: ``[[loras]]`` tables of the registry file, listed at ``GET /v1/loras``.

An adapter is made for one model family (its layers fit that family's UNet and text encoders);
an entry may also name the models it fits (``models``), when only some of the family do (the
embedded adapters fit only their embedded model). A request names up to ``MAX_LORAS`` of them
with a weight each (``latentq.contract.LoraChoice``); the API checks them (``invalid_lora``) and
the job spec carries them with their final weights.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from latentq.contract import MAX_LORA_WEIGHT, MIN_LORA_WEIGHT
from latentq.models import EMBEDDED_PREFIX, FAMILY_TASKS, FLOW_FAMILIES, MODEL_ID_PATTERN, Family


class LoraSpec(BaseModel):
    """One ``[[loras]]`` registry entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=MODEL_ID_PATTERN, description="Id requests name.")
    name: str = ""
    description: str = ""
    #: A folder holding ``pytorch_lora_weights.safetensors`` (or ``weight_name``), a ``.safetensors``
    #: file, a hub id, or ``embedded:<name>`` for an adapter the worker builds.
    source: str = Field(min_length=1)
    #: The file to load in a folder or hub repository; default: diffusers' own guess.
    weight_name: str | None = None
    #: The model family the adapter was trained for.
    family: Family
    #: Ids of the models it fits; empty: every model of its family.
    models: tuple[str, ...] = ()
    #: Weight of a request that names the adapter without one.
    default_weight: float = Field(1.0, ge=MIN_LORA_WEIGHT, le=MAX_LORA_WEIGHT)
    #: Words the adapter was trained to respond to; listed for clients, never added to prompts.
    trigger_words: tuple[str, ...] = ()

    @field_validator("family")
    @classmethod
    def _drawing_family(cls, family: str) -> str:
        if "text-to-image" not in FAMILY_TASKS.get(family, ()):
            raise ValueError(f"LoRA adapters are for drawing families, not {family!r}")
        if family in FLOW_FAMILIES:  # their pipelines (worker.diffusion.flow) load no adapters yet
            raise ValueError(f"LoRA adapters are not supported for the {family!r} family yet")
        return family

    @property
    def embedded_name(self) -> str | None:
        """The embedded adapter's name when ``source`` is ``embedded:<name>``, else None."""
        return self.source.removeprefix(EMBEDDED_PREFIX) if self.source.startswith(EMBEDDED_PREFIX) else None

    def fits(self, model_id: str, family: str) -> bool:
        """Whether the adapter may be used with model ``model_id`` of ``family``."""
        return self.family == family and (not self.models or model_id in self.models)


def read_lora_entries(path: Path) -> list[LoraSpec]:
    """Return the ``[[loras]]`` entries of a registry TOML file."""
    with open(path, "rb") as file:
        data = tomllib.load(file)
    return [LoraSpec.model_validate(entry) for entry in data.get("loras", [])]
