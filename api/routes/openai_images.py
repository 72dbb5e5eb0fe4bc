"""The OpenAI Images API, translated: ``POST /v1/images/generations``, ``/v1/images/edits`` and
``/v1/images/variations`` for the official ``openai`` clients and the tools built on them (point
``base_url`` at ``<latentq>/v1``).

Like the Stability routes, each request becomes our contract's request and is queued like any job
(same queue, workers, limits and credits), waited for up to ``LATENTQ_SYNC_TIMEOUT_S`` and
answered in OpenAI's shapes, errors included (``{"error": {"message", "type", "param", "code"}}``).
Stable Diffusion's own parameters come as extra body fields, as other OpenAI-compatible diffusion
servers take them (``extra_body`` in the Python client).
"""

from __future__ import annotations

import base64
import io
import json
import re
import time
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from api.body_parsing import json_body_openapi, multipart_openapi, parse_body
from api.deps import Caller, CallerDep
from api.error_envelope import openai_error
from api.presets import apply_style
from api.shaped_route import Revision, ShapedRoute, wait_for_images
from api.stability_bodies import parse_fields, read_form, require_file
from api.uploads import FORMATS, decode_base64, open_image, png_bytes
from latentq.contract import (
    MAX_LORAS,
    MAX_PROMPT_CHARS,
    MAX_SEED,
    GenerateRequest,
    JobSpec,
    LoraChoice,
    OutputFormat,
    Sampler,
    WeightedPrompt,
)
from latentq.errors import LatentqError
from latentq.models import ModelRegistry

_SIZE = re.compile(r"([1-9][0-9]{1,4})x([1-9][0-9]{1,4})")
#: Most pixels of a mask decoded (its size is checked against the image's afterwards).
MAX_MASK_PIXELS = 16_777_216
#: The body's fields our request takes as they are.
_PASSED_ON = {"model", "prompt", "negative_prompt", "seed", "steps", "cfg_scale", "sampler", "style_preset",
              "output_format", "image_strength", "loras"}  # fmt: skip
#: Most denoising steps a request may ask for (our contract's limit).
MAX_STEPS = 150
#: OpenAI's ``quality`` values (gpt-image's and DALL-E 3's).
Quality = Literal["auto", "low", "medium", "high", "standard", "hd"]
#: Denoising steps each ``quality`` asks for, as a share of the model's default (``steps`` wins).
QUALITY_STEPS: dict[str, float] = {"low": 0.5, "high": 1.5, "hd": 1.5}
#: How much of the input image a variation keeps (our ``image_strength``: 1 keeps it, 0 ignores it).
VARIATION_STRENGTH = 0.35
#: Stands for the missing prompt of a variation until the spec is made; then it is emptied, so
#: the variation is drawn with the empty prompt (the text encoder's unconditional input).
_NO_PROMPT = "\u2400latentq-variation\u2400"


class OpenAIRoute(ShapedRoute):
    """A route whose every failure, authentication and validation included, answers in OpenAI's shape."""

    render = staticmethod(openai_error)


router = APIRouter(prefix="/v1", tags=["openai-images"], route_class=OpenAIRoute)


class ImageOptions(BaseModel):
    """The fields every OpenAI image request takes, and Stable Diffusion's as extras."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(None, description="A registered model id; omitted: the default model.")
    n: int = Field(1, ge=1, le=10, description="Images to generate.")
    size: str | None = Field(
        None, description="WIDTHxHEIGHT within the model's limits; omitted or auto: the model's default."
    )
    response_format: Literal["url", "b64_json"] = Field(
        "url", description="url: presigned S3 URLs (LATENTQ_S3_URL_EXPIRES_S); b64_json: the images inline."
    )
    output_format: OutputFormat = Field("png", description="File format of the images.")
    quality: Quality | None = Field(
        None, description="Steps as a share of the model's default: low 0.5, high and hd 1.5 (steps wins)."
    )
    style: str | None = Field(None, max_length=32, description="Accepted and ignored: see style_preset.")
    user: str | None = Field(
        None, max_length=256, description="Accepted and ignored: the key names the account."
    )
    negative_prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS)
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Random seed; 0 lets the service choose.")
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps; omitted: the model's.")
    cfg_scale: float | None = Field(None, ge=0, le=35, description="Classifier-free guidance scale.")
    sampler: Sampler | None = Field(None, description="Sampler; omitted: the model's.")
    style_preset: str | None = Field(None, description="A style preset name (see GET /v1/styles).")
    loras: list[LoraChoice] | None = Field(
        None, max_length=MAX_LORAS,
        description="Extra: LoRA adapters (GET /v1/loras); in a multipart form, as a JSON string.",
    )  # fmt: skip

    @field_validator("loras", mode="before")
    @classmethod
    def _loras_from_form(cls, value: Any) -> Any:
        """A multipart form carries the list as JSON text."""
        if isinstance(value, str):
            try:
                return json.loads(value)
            except ValueError:
                raise ValueError("must be a JSON list of {id, weight} objects") from None
        return value


class ImageFields(ImageOptions):
    """The fields of OpenAI's prompted image requests (generations, edits)."""

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")


class ImageGenerationRequest(ImageFields):
    """Body of ``POST /v1/images/generations`` (JSON: a string is no number)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class ImageEditForm(ImageFields):
    """The fields of ``POST /v1/images/edits`` (multipart: numbers come as text), beside its files
    ``image`` and, optionally, ``mask``."""

    model_config = ConfigDict(extra="forbid", strict=False)


class ImageVariationForm(ImageOptions):
    """The fields of ``POST /v1/images/variations`` (multipart), beside its file ``image``. OpenAI's
    variations take no prompt; ours may, as an extra."""

    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS, description="Extra: omitted, the empty prompt."
    )
    image_strength: float = Field(
        VARIATION_STRENGTH, ge=0, le=1, description="Extra: how much of the image is kept (1: all of it)."
    )


def parse_size(size: str | None) -> dict[str, int]:
    """Return the width and height ``size`` names (none for omitted or ``auto``)."""
    if size is None or size == "auto":
        return {}
    match = _SIZE.fullmatch(size)
    if match is None:
        raise LatentqError.for_field(
            "invalid_size", "size", f"size must be WIDTHxHEIGHT, e.g. 512x512 (got {size!r})"
        )
    return {"width": int(match[1]), "height": int(match[2])}


def check_image_size(size: str | None, image: str) -> None:
    """Raise ``invalid_size`` unless ``size`` is omitted, ``auto`` or the size of ``image`` (base64):
    an edit or variation takes its image's size."""
    wanted = parse_size(size)
    if not wanted:
        return
    try:  # only the header is read; a broken image is reported for what it is when it is decoded
        with Image.open(io.BytesIO(base64.b64decode(image)), formats=list(FORMATS)) as opened:
            width, height = opened.size
    except (ValueError, OSError, UnidentifiedImageError, Image.DecompressionBombError):
        return
    if (wanted["width"], wanted["height"]) != (width, height):
        raise LatentqError.for_field(
            "invalid_size", "size", f"size: the images take the input image's size, {width}x{height} "
            f"(got {size}); omit size or give that one",
        )  # fmt: skip


async def input_image(body: ImageOptions, files: dict[str, str]) -> str:
    """Return the request's ``image`` (base64), once ``body.size`` is found to be its size (then
    cleared: the output takes the image's size)."""
    image = require_file(files, "image")
    await run_in_threadpool(check_image_size, body.size, image)
    body.size = None
    return image


def quality_steps(body: ImageOptions, registry: ModelRegistry) -> dict[str, int]:
    """Return the ``steps`` ``body``'s quality asks for, unless it gives steps (none: the model's)."""
    share = QUALITY_STEPS.get(body.quality or "auto")
    model = registry.get(body.model) if body.model is not None else registry.default
    if share is None or body.steps is not None or model is None:  # an unknown model is refused later
        return {}
    return {"steps": min(MAX_STEPS, max(1, round(model.defaults.steps * share)))}


def generation_request(body: ImageOptions, registry: ModelRegistry, **extra: Any) -> GenerateRequest:
    """Return our request for an OpenAI image body (and ``extra`` fields of ours)."""
    fields = body.model_dump(include=_PASSED_ON, exclude_none=True) | quality_steps(body, registry)
    return GenerateRequest.model_validate({"samples": body.n, **parse_size(body.size), **fields, **extra})


def mask_of(mask: str) -> str:
    """Return OpenAI's ``mask`` (base64; transparent = repaint) as our ``MASK_IMAGE_BLACK`` mask
    image (base64 PNG: its alpha channel, black = repaint)."""
    image = open_image(decode_base64(mask, "mask"), "mask", MAX_MASK_PIXELS)
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise LatentqError.for_field(
            "invalid_mask_image",
            "mask",
            "mask must have an alpha channel: its transparent pixels are repainted",
        )
    return base64.b64encode(png_bytes(image.convert("RGBA").getchannel("A"))).decode()


async def read_body(request: Request) -> ImageGenerationRequest:
    """Parse the body as an ``ImageGenerationRequest``."""
    return parse_body(ImageGenerationRequest, await request.body())


_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"description": description} for status, description in [
        (400, "Invalid request: param names the field"), (401, "Missing or invalid API key"),
        (402, "The account's credits do not cover the job"), (403, "The key lacks the generate scope"),
        (409, "The job was canceled while the answer waited for it"), (413, "The body is too large"),
        (429, "Over the key's rate, or the account's jobs at once"),
        (503, "The model's queue is full, or Redis is unreachable"),
        (504, "The job did not finish within the wait: it goes on (its id is in the message)"),
    ]
}  # fmt: skip


@router.post(
    "/images/generations", responses=_RESPONSES, openapi_extra=json_body_openapi(ImageGenerationRequest)
)
async def generate_images(
    body: Annotated[ImageGenerationRequest, Depends(read_body)],
    caller: CallerDep,
) -> dict[str, Any]:
    """Generate images from a prompt (OpenAI's ``images.generate``) and answer with them."""
    return await images_answer(caller, generation_request(body, caller.services.registry), body, body.prompt)


async def images_answer(
    caller: Caller, ours: GenerateRequest, body: ImageOptions, prompt: str, revise: Revision | None = None
) -> dict[str, Any]:
    """Run ``ours`` (its spec changed by ``revise``, if given) and answer with its images as OpenAI
    does, in ``body``'s ``response_format``, with ``prompt`` as their revised prompt. Images the
    model's safety checker filtered are left out, as OpenAI shows none; if that leaves none, the
    answer is OpenAI's ``content_policy_violation`` error."""
    stored = await wait_for_images(caller, ours, revise)
    shown = [image for image in stored if not image.filtered]
    if stored and not shown:
        raise LatentqError(
            "content_policy_violation",
            "Your request was rejected by the safety system: every image was filtered.",
        )
    stored = shown
    store = caller.services.store
    if body.style_preset is not None:  # the prompt as drawn: in the style's template
        prompt = apply_style(body.style_preset, [WeightedPrompt(text=prompt, weight=1.0)])[0].text
    data = []
    for image in stored:
        if body.response_format == "b64_json":
            item = {"b64_json": base64.b64encode(await run_in_threadpool(store.get, image.key)).decode()}
        else:
            item = {"url": store.url(image.key)}
        data.append({**item, "revised_prompt": prompt})
    return {"created": int(time.time()), "data": data}


@router.post(
    "/images/edits",
    responses=_RESPONSES,
    openapi_extra=multipart_openapi(ImageEditForm, ("image", "mask")),
)
async def edit_image(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Redraw an image guided by a prompt (OpenAI's ``images.edit``): with a ``mask``, only its
    transparent pixels are repainted (our masking); without one, the whole image is redrawn
    (image-to-image at the default strength). The images take the input image's size."""
    fields, files = await read_form(request, ("image", "mask"))
    body: ImageEditForm = parse_fields(ImageEditForm, fields)
    image = await input_image(body, files)
    if "mask" in files:
        mask = await run_in_threadpool(mask_of, files["mask"])
        masking = {"mask_source": "MASK_IMAGE_BLACK", "mask_image": mask}
        ours = generation_request(body, caller.services.registry, init_image=image, **masking)
    else:
        ours = generation_request(body, caller.services.registry, init_image=image)
    return await images_answer(caller, ours, body, body.prompt)


def without_prompt(spec: JobSpec) -> JobSpec:
    """Return ``spec`` with the stand-in prompt emptied (a style preset's template stays)."""
    prompts = [WeightedPrompt(text=p.text.replace(_NO_PROMPT, ""), weight=p.weight) for p in spec.prompts]
    return spec.model_copy(update={"prompts": prompts})


@router.post(
    "/images/variations",
    responses=_RESPONSES,
    openapi_extra=multipart_openapi(ImageVariationForm, ("image",)),
)
async def vary_image(request: Request, caller: CallerDep) -> dict[str, Any]:
    """Draw variations of an image (OpenAI's ``images.create_variation``): image-to-image keeping
    ``image_strength`` of it (0.35 unless given), with the empty prompt unless one is given. The
    images take the input image's size."""
    fields, files = await read_form(request, ("image",))
    body: ImageVariationForm = parse_fields(ImageVariationForm, fields)
    image = await input_image(body, files)
    if body.prompt is not None:
        ours = generation_request(body, caller.services.registry, init_image=image)
        return await images_answer(caller, ours, body, body.prompt)
    ours = generation_request(body, caller.services.registry, init_image=image, prompt=_NO_PROMPT)
    return await images_answer(caller, ours, body, "", without_prompt)
