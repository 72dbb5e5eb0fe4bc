"""Stability REST v1's request bodies, and their translation into our contract.

Text-to-image takes JSON; the image routes take ``multipart/form-data`` with prompts as
``text_prompts[<index>][text|weight]`` fields and images as file parts, exactly as Stability's
OpenAPI description has them. Each body becomes a ``GenerateRequest`` or ``UpscaleRequest``, so
every rule after that is the one our own routes apply.
"""

from __future__ import annotations

import base64
import re
from typing import Any, Literal

from fastapi import Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile

from api.body_parsing import validation_error
from api.uploads import MAX_IMAGE_BYTES
from latentq.contract import (
    MAX_LORAS,
    MAX_SEED,
    GenerateRequest,
    InitImageMode,
    LoraChoice,
    MaskSource,
    Sampler,
    TextPrompt,
    UpscaleRequest,
)
from latentq.errors import LatentqError

#: Stability's side rule for text-to-image: multiples of 64, at least 128.
SIDE_MULTIPLE = 64
MIN_SIDE = 128
#: Stability's smallest upscale target side.
MIN_UPSCALE_SIDE = 512

ClipGuidancePreset = Literal["FAST_BLUE", "FAST_GREEN", "NONE", "SIMPLE", "SLOW", "SLOWER", "SLOWEST"]


class GenerationOptions(BaseModel):
    """Stability's ``GenerationRequestOptionalParams`` plus its later ``style_preset`` and ``extras``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    cfg_scale: float = Field(7.0, ge=0, le=35)
    clip_guidance_preset: ClipGuidancePreset = Field(
        "NONE", description="Accepted and ignored: CLIP guidance needs weights latentq does not load."
    )
    sampler: Sampler | None = None
    samples: int = Field(1, ge=1, le=10)
    seed: int = Field(0, ge=0, le=MAX_SEED)
    steps: int = Field(50, ge=10, le=150)
    style_preset: str | None = None
    extras: dict[str, Any] | None = Field(None, description="Accepted and ignored.")
    loras: list[LoraChoice] | None = Field(
        None,
        max_length=MAX_LORAS,
        description="Extension: LoRA adapters (GET /v1/loras), as on /v1/generate.",
    )


class TextToImageBody(GenerationOptions):
    """Stability v1's ``TextToImageRequestBody`` (JSON)."""

    text_prompts: list[TextPrompt] = Field(min_length=1, max_length=16)
    height: int | None = Field(None, description="Multiple of 64, at least 128; omitted: the engine's.")
    width: int | None = Field(None, description="Multiple of 64, at least 128; omitted: the engine's.")


class FormTextPrompt(TextPrompt):
    """A prompt from form fields: its weight arrives as text."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class FormLoraChoice(LoraChoice):
    """An adapter from form fields (``loras[0][id]``, ``loras[0][weight]``): its weight arrives as text."""

    model_config = ConfigDict(extra="forbid", strict=False, frozen=True)


class ImageToImageBody(GenerationOptions):
    """Stability v1's ``ImageToImageRequestBody`` (multipart; ``init_image`` is a file part)."""

    # Form fields arrive as text: numbers are parsed from it.
    model_config = ConfigDict(extra="forbid", strict=False)

    text_prompts: list[FormTextPrompt] = Field(min_length=1, max_length=16)
    loras: list[FormLoraChoice] | None = Field(None, max_length=MAX_LORAS)  # type: ignore[assignment]
    init_image_mode: InitImageMode = "IMAGE_STRENGTH"
    image_strength: float | None = Field(None, ge=0, le=1)
    step_schedule_start: float | None = Field(None, ge=0, le=1)
    step_schedule_end: float | None = Field(None, ge=0, le=1)


class MaskingBody(GenerationOptions):
    """Stability v1's ``MaskingRequestBody`` (multipart; ``init_image``/``mask_image`` are file parts)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    text_prompts: list[FormTextPrompt] = Field(min_length=1, max_length=16)
    loras: list[FormLoraChoice] | None = Field(None, max_length=MAX_LORAS)  # type: ignore[assignment]
    mask_source: MaskSource


class UpscaleBody(BaseModel):
    """Stability v1's ``UpscaleImageRequestBody`` (multipart; ``image`` is a file part)."""

    model_config = ConfigDict(extra="forbid", strict=False)

    width: int | None = Field(None, ge=MIN_UPSCALE_SIDE)
    height: int | None = Field(None, ge=MIN_UPSCALE_SIDE)


def check_sides(body: TextToImageBody) -> None:
    """Raise ``invalid_height_or_width`` unless each given side is a multiple of 64, at least 128."""
    for field, value in (("width", body.width), ("height", body.height)):
        if value is not None and (value % SIDE_MULTIPLE or value < MIN_SIDE):
            raise LatentqError.for_field(
                f"invalid_{field}",
                field,
                f"{field}: must be a multiple of {SIDE_MULTIPLE} and at least {MIN_SIDE} (got {value})",
            )


_PROMPT_KEY = re.compile(r"^text_prompts\[(\d+)\]\[(text|weight)\]$")
_LORA_KEY = re.compile(r"^loras\[(\d+)\]\[(id|weight)\]$")


async def read_form(request: Request, files: tuple[str, ...]) -> tuple[dict[str, Any], dict[str, str]]:
    """Return a multipart body's fields (prompts gathered into ``text_prompts``) and its ``files``
    as base64, each required file present and within the upload limit."""
    content_type = request.headers.get("content-type", "")
    # A body without files may come form-encoded; either way a required file is then reported missing.
    if content_type and not content_type.startswith(
        ("multipart/form-data", "application/x-www-form-urlencoded")
    ):
        raise LatentqError(
            "invalid_request", "The body must be multipart/form-data, as Stability's API takes it."
        )
    try:
        form = await request.form(max_files=len(files), max_fields=200)
    except LatentqError:
        raise  # the body went over its limit while it was read
    except Exception as error:  # noqa: BLE001 - any parse failure is the client's malformed body
        raise LatentqError("invalid_request", f"The multipart body could not be read: {error}") from None
    fields: dict[str, Any] = {}
    prompts: dict[int, dict[str, Any]] = {}
    loras: dict[int, dict[str, Any]] = {}
    uploads: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key not in files:
                raise LatentqError.for_field("unknown_field", key, f"Unknown file field '{key}'.")
            data = await value.read(MAX_IMAGE_BYTES + 1)
            uploads[key] = base64.b64encode(data).decode()
        elif match := _PROMPT_KEY.match(key):
            # Duplicate entries override earlier ones, as Stability documents.
            prompts.setdefault(int(match[1]), {})[match[2]] = value
        elif match := _LORA_KEY.match(key):
            loras.setdefault(int(match[1]), {})[match[2]] = value
        else:
            fields[key] = value
    if prompts:
        fields["text_prompts"] = [prompts[index] for index in sorted(prompts)]
    if loras:
        fields["loras"] = [loras[index] for index in sorted(loras)]
    return fields, uploads


def require_file(uploads: dict[str, str], name: str) -> str:
    """Return upload ``name`` (base64), or raise: it is required."""
    if name not in uploads:
        raise LatentqError.for_field(f"invalid_{name}", name, f"{name}: is required")
    return uploads[name]


def parse_fields(model: type[BaseModel], fields: dict[str, Any]) -> Any:
    """Validate form ``fields`` with ``model``, errors named as for JSON bodies."""
    try:
        return model.model_validate(fields)
    except ValidationError as error:
        raise validation_error(error.errors(include_url=False), model) from None


def options(body: GenerationOptions) -> dict[str, Any]:
    """Return the fields of ``body`` that our ``GenerateRequest`` shares."""
    fields = {"cfg_scale", "sampler", "samples", "seed", "steps", "style_preset", "loras"}
    return body.model_dump(include=fields)


def generate_request(
    engine: str, body: TextToImageBody | ImageToImageBody | MaskingBody, **extra: Any
) -> GenerateRequest:
    """Return our request for a Stability generation body on ``engine``."""
    prompts = [TextPrompt.model_validate(p.model_dump()) for p in body.text_prompts]
    return GenerateRequest(model=engine, text_prompts=prompts, **options(body), **extra)


def upscale_request(engine: str, body: UpscaleBody, image: str) -> UpscaleRequest:
    """Return our request for a Stability upscale body on ``engine``."""
    return UpscaleRequest(model=engine, image=image, width=body.width, height=body.height)
