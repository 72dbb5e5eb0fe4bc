"""Stability's v2beta sketch route, translated: ``POST /v2beta/stable-image/control/sketch``.

A sketch and a prompt become an image: the sketch is the control image of a registered
``sketch``/``scribble``/``lineart`` ControlNet of the model, queued like any job (same queue,
workers, limits and credits), waited for and answered as Stability's v2beta answers: the image's
bytes (``Accept: image/*``, the default) with ``finish-reason`` and ``seed`` headers, or JSON
``{"image", "finish_reason", "seed"}`` (``Accept: application/json``); errors as
``{"id", "name", "errors": [...]}``. See docs/STABILITY.md.
"""

from __future__ import annotations

import base64
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from api.body_parsing import multipart_openapi
from api.error_envelope import stability_v2_error
from api.routes.stability import StabilityCallerDep, finish_reason
from api.shaped_route import ShapedRoute, wait_for_images
from api.stability_bodies import parse_fields, read_form, require_file
from latentq.contract import MAX_PROMPT_CHARS, GenerateRequest, OutputFormat
from latentq.errors import LatentqError
from latentq.models import SKETCH_TYPES, ControlNetSpec, ModelRegistry, ModelSpec

#: Stability's largest v2beta seed (one below v1's).
MAX_V2_SEED = 4_294_967_294


class StabilityV2Route(ShapedRoute):
    """A route whose every failure, authentication and validation included, answers in v2beta's shape."""

    render = staticmethod(stability_v2_error)


router = APIRouter(prefix="/v2beta", tags=["stability-v2beta"], route_class=StabilityV2Route)


class SketchBody(BaseModel):
    """Stability v2beta's control/sketch form fields (``image`` is a file part), plus ``model``."""

    # Form fields arrive as text: numbers are parsed from it.
    model_config = ConfigDict(extra="forbid", strict=False)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    control_strength: float = Field(0.7, ge=0, le=1, description="How much the sketch shapes the image.")
    negative_prompt: str | None = Field(None, max_length=MAX_PROMPT_CHARS, description="What to avoid.")
    seed: int = Field(0, ge=0, le=MAX_V2_SEED, description="0: the service chooses.")
    output_format: OutputFormat = "png"
    style_preset: str | None = None
    model: str | None = Field(None, description="latentq's extension: the model; default: the default model.")


def sketch_target(registry: ModelRegistry, model_id: str | None) -> tuple[ModelSpec, ControlNetSpec]:
    """Return the model (``model_id``, else the default, else the first with one) and its sketch
    ControlNet (the first of ``SKETCH_TYPES``' order); raise a named error when there is none."""
    if model_id is not None and registry.get(model_id) is None:
        raise LatentqError.for_field("invalid_model", "model", f"model: unknown model '{model_id}'")
    candidates = [registry.models[model_id]] if model_id else [registry.default, *registry.models.values()]
    for model in candidates:
        if "text-to-image" not in model.tasks:
            continue
        fitting = [c for c in registry.controlnets_for(model.family) if c.control_type in SKETCH_TYPES]
        if fitting:
            return model, min(fitting, key=lambda c: SKETCH_TYPES.index(c.control_type))
    where = f"model '{model_id}'" if model_id else "any model"
    message = f"no sketch ControlNet ({', '.join(SKETCH_TYPES)}) is registered for {where}"
    raise LatentqError.for_field("invalid_control_model", "control_model", message)


def wants_json(request: Request) -> bool:
    """Whether the client asked for JSON (``Accept: application/json``) rather than image bytes."""
    first = request.headers.get("accept", "").split(",")[0]
    return first.split(";")[0].strip().lower() == "application/json"


@router.post(
    "/stable-image/control/sketch",
    responses={200: {"content": {"image/*": {}, "application/json": {}}, "description": "The image"}},
    openapi_extra=multipart_openapi(SketchBody, ("image",)),
)
async def control_sketch(request: Request, caller: StabilityCallerDep) -> Response:
    """Turn a sketch and a prompt into an image (Stability's ``controlSketch``)."""
    fields, files = await read_form(request, ("image",))
    body: SketchBody = parse_fields(SketchBody, fields)
    model, controlnet = sketch_target(caller.services.registry, body.model)
    ours = GenerateRequest(
        model=model.id, prompt=body.prompt, negative_prompt=body.negative_prompt or None, seed=body.seed,
        output_format=body.output_format, style_preset=body.style_preset,
        control_image=require_file(files, "image"), control_model=controlnet.id,
        control_strength=body.control_strength,
    )  # fmt: skip
    try:
        [image] = await wait_for_images(caller, ours)
    except LatentqError as error:
        if error.details.get("field") != "control_image":
            raise
        # Our control image is the route's ``image``: the message names the field the client sent.
        message = error.message.replace("control_image", "image")
        raise LatentqError.for_field(error.name, "image", message) from None
    data = await run_in_threadpool(caller.services.store.get, image.key)
    if wants_json(request):
        encoded = base64.b64encode(data).decode()
        answer: dict[str, Any] = {"image": encoded, "finish_reason": finish_reason(image), "seed": image.seed}
        return JSONResponse(answer)
    headers = {"finish-reason": finish_reason(image), "seed": str(image.seed)}
    return Response(data, media_type=image.content_type, headers=headers)
