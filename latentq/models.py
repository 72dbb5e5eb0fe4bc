"""The model registry: which models exist, their pipeline family, size limits and defaults.

Entries come from a TOML file (``LATENTQ_MODELS_FILE``; the packaged ``models.toml``
registers the two embedded tiny models) and from ``LATENTQ_MODELS`` (a JSON list of
entries that add to or replace the file's, by id). The API validates every request against
its model's entry; each worker serves the models named in ``LATENTQ_WORKER_MODELS``.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from latentq.contract import SAMPLERS, JobKind, Sampler

if TYPE_CHECKING:
    from latentq.loras import LoraSpec
    from latentq.safety import SafetyCheckerSpec

#: Registry shipped with latentq: the embedded tiny models.
PACKAGED_REGISTRY = Path(__file__).with_name("models.toml")

#: Prefix of a source naming an embedded model that the worker builds locally.
EMBEDDED_PREFIX = "embedded:"

#: Model ids are used in queue names and URLs.
MODEL_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"

#: Pipeline families: six that draw (text-to-image, image-to-image, masking), four UNet ones and
#: two flow-matching transformers (``sd3``: SD3/3.5, ``flux``: FLUX.1), and two that upscale:
#: diffusers' x4 upscaler, and a plain Lanczos resampler that loads no weights.
Family = Literal["sd1", "sd2", "sdxl", "turbo", "sd3", "flux", "upscaler-x4", "resampler"]

#: Families that sample by flow matching (a transformer, bf16 on CUDA, their own samplers).
FLOW_FAMILIES = ("sd3", "flux")

#: What a model does with the images it draws (``latentq.safety``): not checked, checked and marked
#: ``nsfw``, or checked and the flagged ones replaced by black images.
SafetyMode = Literal["off", "flag", "filter"]

#: Source of a model that needs no weights (the resampler).
BUILTIN_SOURCE = "builtin"

#: Most pixels an upscaled image may have (Stability's limit).
MAX_UPSCALE_PIXELS = 4_194_304

_DRAWING = ("text-to-image", "image-to-image", "masking")
_UPSCALE_LIMITS = {"min_side": 1, "max_side": MAX_UPSCALE_PIXELS, "multiple": 1, "min_pixels": 1,
                   "max_pixels": MAX_UPSCALE_PIXELS}  # fmt: skip

#: SDXL's trained resolutions (width, height), as Stability documents them for its SDXL engines.
SDXL_SIZES = (
    (1024, 1024), (1152, 896), (896, 1152), (1216, 832), (832, 1216),
    (1344, 768), (768, 1344), (1536, 640), (640, 1536),
)  # fmt: skip


class ModelLimits(BaseModel):
    """The sizes a model accepts, in pixels."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_side: int = Field(64, ge=1)
    max_side: int = Field(2048, ge=8)
    #: Width and height must be multiples of this (the VAE's factor is 8).
    multiple: int = Field(8, ge=1)
    min_pixels: int = Field(262_144, ge=1)
    max_pixels: int = Field(1_048_576, ge=64)
    #: When set, only these (width, height) pairs are accepted.
    sizes: tuple[tuple[int, int], ...] | None = None


class ModelDefaults(BaseModel):
    """Values a request gets for the fields it leaves out."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    width: int = 512
    height: int = 512
    steps: int = Field(30, ge=1, le=150)
    cfg_scale: float = Field(7.0, ge=0, le=35)
    sampler: Sampler = "K_DPMPP_2M_KARRAS"


#: Per-family limits and defaults; an entry's own ``limits``/``defaults`` tables override them.
FAMILY_LIMITS: dict[str, dict[str, Any]] = {
    "sd1": {"min_side": 128, "min_pixels": 262_144, "max_pixels": 1_048_576},
    "sd2": {"min_side": 128, "min_pixels": 262_144, "max_pixels": 1_048_576},
    "sdxl": {"min_side": 512, "min_pixels": 262_144, "max_pixels": 1_048_576, "sizes": SDXL_SIZES},
    "turbo": {"min_side": 256, "min_pixels": 65_536, "max_pixels": 1_048_576},
    # Sides a multiple of 16: the VAE's factor 8 times the transformer's 2x2 patches.
    "sd3": {"min_side": 256, "multiple": 16, "min_pixels": 65_536, "max_pixels": 2_097_152},
    "flux": {"min_side": 256, "multiple": 16, "min_pixels": 65_536, "max_pixels": 2_097_152},
    # Upscalers' limits are on the output; inputs may be any size under them.
    "upscaler-x4": _UPSCALE_LIMITS,
    "resampler": _UPSCALE_LIMITS,
}
FAMILY_DEFAULTS: dict[str, dict[str, Any]] = {
    "sd1": {},
    "sd2": {},
    "sdxl": {"width": 1024, "height": 1024},
    "turbo": {"steps": 1, "cfg_scale": 0.0, "sampler": "K_EULER_ANCESTRAL"},
    # diffusers' defaults for these pipelines; FLUX's cfg_scale is its guidance embedding's value.
    "sd3": {"width": 1024, "height": 1024, "steps": 28, "cfg_scale": 7.0, "sampler": "K_EULER"},
    "flux": {"width": 1024, "height": 1024, "steps": 28, "cfg_scale": 3.5, "sampler": "K_EULER"},
    # The x4 upscaler's own scheduler settings (DDIM, v-prediction); the resampler ignores them.
    "upscaler-x4": {"steps": 20, "cfg_scale": 9.0, "sampler": "DDIM"},
    "resampler": {},
}
FAMILY_TASKS: dict[str, tuple[str, ...]] = {
    "sd1": _DRAWING, "sd2": _DRAWING, "sdxl": _DRAWING, "turbo": _DRAWING, "sd3": _DRAWING,
    "flux": _DRAWING,
    "upscaler-x4": ("upscale",), "resampler": ("upscale",),
}  # fmt: skip

#: The samplers of families that do not take every name: the flow-matching families sample with
#: diffusers' flow-matching Euler (``K_EULER``) and, SD3 only, Heun (``K_HEUN``: its scheduler takes
#: no custom sigmas, which FLUX's pipeline passes); the other names are noise-prediction schedulers.
FAMILY_SAMPLERS: dict[str, tuple[str, ...]] = {"sd3": ("K_EULER", "K_HEUN"), "flux": ("K_EULER",)}
#: Families with no negative prompt (FLUX: a guidance embedding, no classifier-free guidance).
NO_NEGATIVE_PROMPT = ("flux",)


class ModelSpec(BaseModel):
    """One registry entry."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=MODEL_ID_PATTERN, description="Id requests name; also Stability's engine id.")
    name: str = ""
    description: str = ""
    #: A local diffusers folder, a hub id, or ``embedded:<name>`` for a model the worker builds.
    source: str = Field(min_length=1)
    family: Family
    #: What the model does; default: the family's. A dedicated inpainting checkpoint: ["masking"].
    tasks: tuple[JobKind, ...] = ()
    limits: ModelLimits
    defaults: ModelDefaults
    #: Credits one 512x512 image of 30 steps costs (``cost``: scaled by pixels, steps and samples).
    cost: float = Field(1.0, ge=0, le=1_000_000)
    #: ``sd3`` only: false loads the model without its T5 encoder (``text_encoder_3=None``: prompts
    #: read by the two CLIP encoders alone), saving its memory (8.9 GiB in bf16 for SD3.5 Large).
    t5: bool = True
    #: ``off``, ``flag`` or ``filter`` (``latentq.safety``); None: the deployment's ``LATENTQ_SAFETY``.
    safety: SafetyMode | None = None
    #: Id of the ``[[safety_checkers]]`` entry that checks this model's images; None: the
    #: deployment's ``LATENTQ_SAFETY_CHECKER``, else the registry's first.
    safety_checker: str | None = Field(None, pattern=MODEL_ID_PATTERN)

    @model_validator(mode="before")
    @classmethod
    def _apply_family(cls, data: Any) -> Any:
        """Fill ``limits``/``defaults`` from the family's, overridden by the entry's own keys."""
        if not isinstance(data, dict) or data.get("family") not in FAMILY_LIMITS:
            return data
        family = data["family"]
        data = dict(data)
        for key, base in (("limits", FAMILY_LIMITS[family]), ("defaults", FAMILY_DEFAULTS[family])):
            given = data.get(key) or {}
            if isinstance(given, dict):
                data[key] = {**base, **given}
        data.setdefault("name", data.get("id", ""))
        data["tasks"] = data.get("tasks") or FAMILY_TASKS[family]
        return data

    @model_validator(mode="after")
    def _check_defaults(self) -> ModelSpec:
        problem = size_problem(self.limits, self.defaults.width, self.defaults.height)
        if problem:
            raise ValueError(f"model {self.id!r}: its default size is not valid: {problem[2]}")
        if self.defaults.sampler not in self.samplers:
            raise ValueError(f"model {self.id!r}: default sampler {self.defaults.sampler!r} is not one of "
                             f"the {self.family} family's: {', '.join(self.samplers)}")  # fmt: skip
        if not self.t5 and self.family != "sd3":
            raise ValueError(f"model {self.id!r}: t5 = false is for the sd3 family only")
        return self

    @property
    def samplers(self) -> tuple[str, ...]:
        """The sampler names this model's family can run."""
        return FAMILY_SAMPLERS.get(self.family, SAMPLERS)

    @property
    def takes_negative_prompt(self) -> bool:
        """Whether this model's family has negative prompts."""
        return self.family not in NO_NEGATIVE_PROMPT

    @property
    def embedded_name(self) -> str | None:
        """The embedded model's name when ``source`` is ``embedded:<name>``, else None."""
        return self.source.removeprefix(EMBEDDED_PREFIX) if self.source.startswith(EMBEDDED_PREFIX) else None


#: What a ControlNet reads from its control image.
ControlType = Literal[
    "scribble", "sketch", "canny", "depth", "openpose", "lineart", "softedge", "mlsd", "normal",
    "segmentation", "tile", "other",
]  # fmt: skip
#: Control types the sketch route (``/v2beta/stable-image/control/sketch``) uses, in preference order.
SKETCH_TYPES = ("sketch", "scribble", "lineart")


class ControlNetSpec(BaseModel):
    """One registered ControlNet (a ``[[controlnets]]`` table): it conditions the models of its family."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(pattern=MODEL_ID_PATTERN, description="Id requests name in control_model.")
    name: str = ""
    description: str = ""
    #: A local diffusers ``ControlNetModel`` folder, a hub id, or ``embedded:<name>``.
    source: str = Field(min_length=1)
    #: The base family it was trained for; it conditions only models of that family.
    family: Literal["sd1", "sd2", "sdxl", "turbo"]
    control_type: ControlType

    @property
    def embedded_name(self) -> str | None:
        """The embedded ControlNet's name when ``source`` is ``embedded:<name>``, else None."""
        return self.source.removeprefix(EMBEDDED_PREFIX) if self.source.startswith(EMBEDDED_PREFIX) else None


def size_problem(limits: ModelLimits, width: int, height: int) -> tuple[str, str, str] | None:
    """Return (error name, field, message) if ``width`` x ``height`` breaks ``limits``, else None."""
    for field, value in (("width", width), ("height", height)):
        if value % limits.multiple:
            return f"invalid_{field}", field, f"{field} must be a multiple of {limits.multiple} (got {value})"
        if not limits.min_side <= value <= limits.max_side:
            bounds = f"between {limits.min_side} and {limits.max_side}"
            return f"invalid_{field}", field, f"{field} must be {bounds} (got {value})"
    if limits.sizes and (width, height) not in limits.sizes:
        allowed = ", ".join(f"{w}x{h}" for w, h in limits.sizes)
        return "invalid_size", "width", f"{width}x{height} is not one of this model's sizes: {allowed}"
    if not limits.min_pixels <= width * height <= limits.max_pixels:
        bounds = f"between {limits.min_pixels:,} and {limits.max_pixels:,} pixels"
        got = f"{width}x{height} = {width * height:,}"
        return "invalid_pixel_count", "width", f"width x height must be {bounds} (got {got})"
    return None


class ModelRegistry:
    """The registered models, by id, and which one a request gets when it names none."""

    def __init__(
        self,
        models: list[ModelSpec],
        default: str | None = None,
        loras: list[LoraSpec] | None = None,
        controlnets: tuple[ControlNetSpec, ...] = (),
        safety_checkers: tuple[SafetyCheckerSpec, ...] = (),
        safety: SafetyMode = "off",
        safety_checker: str | None = None,
    ) -> None:
        #: The registered safety checkers, by id.
        self.safety_checkers = {checker.id: checker for checker in safety_checkers}
        #: The deployment's safety mode and checker id (``LATENTQ_SAFETY``, ``LATENTQ_SAFETY_CHECKER``).
        self.default_safety, self.default_checker = safety, safety_checker
        #: The registered ControlNets, by id.
        self.controlnets = {controlnet.id: controlnet for controlnet in controlnets}
        if not models:
            raise ValueError("the model registry is empty")
        self.models = {model.id: model for model in models}
        #: The registered LoRA adapters (``[[loras]]`` tables), by id.
        self.loras = {lora.id: lora for lora in loras or ()}
        self.default_id = default or models[0].id
        if self.default_id not in self.models:
            raise ValueError(f"default model {self.default_id!r} is not registered; known: {self.ids()}")
        for model in models:
            self.safety_of(model)  # every model's checker resolves, or the registry is refused

    def safety_of(self, model: ModelSpec) -> tuple[SafetyMode, SafetyCheckerSpec | None]:
        """Return ``model``'s safety mode (its own, else the deployment's) and, unless ``off``, its
        checker (its own, else the deployment's, else the first registered); raise ValueError if
        the checker is not registered."""
        mode: SafetyMode = model.safety or self.default_safety
        checker_id = model.safety_checker or self.default_checker
        if checker_id is not None and checker_id not in self.safety_checkers:
            known = ", ".join(self.safety_checkers) or "none"
            raise ValueError(f"model {model.id!r}: safety checker {checker_id!r} is not registered "
                             f"([[safety_checkers]]: {known})")  # fmt: skip
        if mode == "off":
            return mode, None
        if checker_id is None and not self.safety_checkers:
            raise ValueError(f"model {model.id!r}: safety {mode!r} needs a safety checker, and the "
                             "registry has no [[safety_checkers]] table")  # fmt: skip
        return mode, self.safety_checkers[checker_id or next(iter(self.safety_checkers))]

    def get(self, model_id: str) -> ModelSpec | None:
        """Return the entry for ``model_id``, or None."""
        return self.models.get(model_id)

    @property
    def default(self) -> ModelSpec:
        """The model of requests that name none."""
        return self.models[self.default_id]

    def ids(self) -> list[str]:
        """Return every registered id, in registry order."""
        return list(self.models)

    def controlnets_for(self, family: str) -> list[ControlNetSpec]:
        """Return the ControlNets that condition models of ``family``, in registry order."""
        return [controlnet for controlnet in self.controlnets.values() if controlnet.family == family]


def read_registry_file(path: Path) -> list[ModelSpec]:
    """Return the entries of a registry TOML file (``[[models]]`` tables)."""
    with open(path, "rb") as file:
        data = tomllib.load(file)
    unknown = set(data) - {"models", "loras", "controlnets", "safety_checkers"}
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {sorted(unknown)}; expected [[models]] tables")
    return [ModelSpec.model_validate(entry) for entry in data.get("models", [])]


def read_controlnets(path: Path) -> tuple[ControlNetSpec, ...]:
    """Return the ControlNets of a registry TOML file (``[[controlnets]]`` tables)."""
    with open(path, "rb") as file:
        entries = tomllib.load(file).get("controlnets", [])
    return tuple(ControlNetSpec.model_validate(entry) for entry in entries)


def build_registry(
    file: Path,
    extra: tuple[ModelSpec, ...],
    default: str | None,
    safety: SafetyMode = "off",
    safety_checker: str | None = None,
) -> ModelRegistry:
    """Return the registry of ``file``'s entries, with ``extra`` entries added or replacing by id;
    models that do not say get safety mode ``safety`` and checker ``safety_checker``."""
    merged = {model.id: model for model in read_registry_file(file)}
    merged.update({model.id: model for model in extra})
    from latentq.loras import read_lora_entries  # these modules import this one
    from latentq.safety import read_safety_checkers

    return ModelRegistry(
        list(merged.values()), default, read_lora_entries(file), read_controlnets(file),
        read_safety_checkers(file), safety, safety_checker,
    )  # fmt: skip


#: Each kind of job's share of the cost rule (``job_cost``): an upscale samples few steps at low
#: resolution and decodes one large image.
TASK_COST_FACTORS: dict[str, float] = {
    "text-to-image": 1.0,
    "image-to-image": 1.0,
    "masking": 1.0,
    "upscale": 0.5,
}


def job_cost(model: ModelSpec, width: int, height: int, steps: int, samples: int, task: str) -> float:
    """Credits a job costs: the model's ``cost`` x pixels / 262,144 x steps / 30 x samples x the
    task's factor, rounded to a thousandth, at least 0.001 unless the model is free."""
    cost = model.cost * (width * height / 262_144) * (steps / 30) * samples * TASK_COST_FACTORS[task]
    return 0.0 if model.cost == 0 else max(0.001, round(cost, 3))
