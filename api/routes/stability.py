"""Stability REST v1, translated: existing DreamStudio clients work by changing the base URL.

Each route turns Stability's request into our contract, queues it like any job (same queue,
workers and limits), waits for it and answers in Stability's shapes, errors included
(``{"id", "name", "message"}``). See docs/STABILITY.md for the field-by-field mapping.
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from api.body_parsing import json_body_openapi, multipart_openapi, parse_body
from api.deps import Caller, caller_with, method_scope, presented_key
from api.error_envelope import stability_error
from api.shaped_route import ShapedRoute, wait_for_images
from api.stability_bodies import (
    ImageToImageBody,
    MaskingBody,
    TextToImageBody,
    UpscaleBody,
    check_sides,
    generate_request,
    parse_fields,
    read_form,
    require_file,
    upscale_request,
)
from latentq.contract import GenerateRequest, StoredImage, UpscaleRequest
from latentq.errors import LatentqError

#: Balance reported by ``/v1/user/balance`` until credits exist: effectively unlimited.
UNLIMITED_CREDITS = 1_000_000_000.0


class StabilityRoute(ShapedRoute):
    """A route whose every failure, authentication and validation included, answers in Stability's shape."""

    render = staticmethod(stability_error)


async def get_stability_caller(request: Request) -> Caller:
    """Return the caller, from ``Authorization: Bearer <key>`` or a bare ``Authorization: <key>``."""
    return await caller_with(request, presented_key(request.headers), method_scope(request.method))


StabilityCallerDep = Annotated[Caller, Depends(get_stability_caller)]

router = APIRouter(prefix="/v1", tags=["stability-v1"], route_class=StabilityRoute)


def registered_engine(caller: Caller, engine_id: str) -> str:
    """Return ``engine_id`` if it is registered; raise Stability's ``not_found`` otherwise."""
    if caller.services.registry.get(engine_id) is None:
        raise LatentqError("not_found", f"The specified engine (ID {engine_id}) was not found.")
    return engine_id


async def answer(caller: Caller, ours: GenerateRequest | UpscaleRequest, png: bool) -> Response:
    """Submit ``ours`` like any job (no webhooks), wait for it, and answer with its images in
    Stability's shape."""
    services = caller.services
    if isinstance(ours, GenerateRequest) and png and ours.samples > 1:
        raise LatentqError.for_field(
            "invalid_samples", "samples",
            "samples: Sample count may only be greater than 1 when the accept header is set to "
            "`application/json`",
        )  # fmt: skip
    stored = await wait_for_images(caller, ours)
    images = [(image, await run_in_threadpool(services.store.get, image.key)) for image in stored]
    if png:
        image, data = images[0]
        headers = {"Finish-Reason": finish_reason(image), "Seed": str(image.seed)}
        return Response(data, media_type="image/png", headers=headers)
    artifacts = [
        {"base64": base64.b64encode(data).decode(), "seed": image.seed, "finishReason": finish_reason(image)}
        for image, data in images
    ]
    return JSONResponse({"artifacts": artifacts})


def finish_reason(image: StoredImage) -> str:
    """Stability's finish reason of ``image``: ``CONTENT_FILTERED`` when the model's safety checker
    replaced it (safety ``filter``; the artifact is then a black image), else ``SUCCESS``."""
    return "CONTENT_FILTERED" if image.filtered else "SUCCESS"


_IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {"image/png": {}}, "description": "The artifacts, or the PNG"},
    **{status: {"description": description} for status, description in [
        (400, "Invalid request: the message names the field"), (401, "Missing or invalid API key"),
        (402, "The account's credits do not cover the job"), (403, "The key lacks the generate scope"),
        (404, "No such engine"), (409, "The job was canceled while the answer waited for it"),
        (413, "The body is too large"), (429, "Over the key's rate, or the account's jobs at once"),
        (503, "The engine's queue is full, or Redis is unreachable"),
        (504, "The job did not finish within the wait: it goes on (its id is in the message)"),
    ]},
}  # fmt: skip


@router.post(
    "/generation/{engine_id}/text-to-image",
    responses=_IMAGE_RESPONSES,
    openapi_extra=json_body_openapi(TextToImageBody),
)
async def text_to_image(engine_id: str, request: Request, caller: StabilityCallerDep) -> Response:
    """Generate images from text prompts and answer with them (Stability's ``textToImage``)."""
    engine = registered_engine(caller, engine_id)
    body = parse_body(TextToImageBody, await request.body())
    check_sides(body)
    ours = generate_request(engine, body, width=body.width, height=body.height)
    return await answer(caller, ours, wants_png(request))


@router.post(
    "/generation/{engine_id}/image-to-image",
    responses=_IMAGE_RESPONSES,
    openapi_extra=multipart_openapi(ImageToImageBody, ("init_image",)),
)
async def image_to_image(engine_id: str, request: Request, caller: StabilityCallerDep) -> Response:
    """Redraw an init image guided by text prompts (Stability's ``imageToImage``)."""
    engine = registered_engine(caller, engine_id)
    fields, files = await read_form(request, ("init_image",))
    body: ImageToImageBody = parse_fields(ImageToImageBody, fields)
    schedule = body.model_dump(include={"init_image_mode", "image_strength", "step_schedule_start",
                                        "step_schedule_end"}, exclude_none=True)  # fmt: skip
    ours = generate_request(engine, body, init_image=require_file(files, "init_image"), **schedule)
    return await answer(caller, ours, wants_png(request))


@router.post(
    "/generation/{engine_id}/image-to-image/masking",
    responses=_IMAGE_RESPONSES,
    openapi_extra=multipart_openapi(MaskingBody, ("init_image", "mask_image")),
)
async def masking(engine_id: str, request: Request, caller: StabilityCallerDep) -> Response:
    """Repaint the masked part of an init image (Stability's ``masking``)."""
    engine = registered_engine(caller, engine_id)
    fields, files = await read_form(request, ("init_image", "mask_image"))
    body: MaskingBody = parse_fields(MaskingBody, fields)
    ours = generate_request(
        engine, body, init_image=require_file(files, "init_image"), mask_source=body.mask_source,
        mask_image=files.get("mask_image"),
    )  # fmt: skip
    return await answer(caller, ours, wants_png(request))


@router.post(
    "/generation/{engine_id}/image-to-image/upscale",
    responses=_IMAGE_RESPONSES,
    openapi_extra=multipart_openapi(UpscaleBody, ("image",)),
)
async def upscale(engine_id: str, request: Request, caller: StabilityCallerDep) -> Response:
    """Enlarge an image, by 2 or to a width or height (Stability's ``upscaleImage``)."""
    engine = registered_engine(caller, engine_id)
    fields, files = await read_form(request, ("image",))
    body: UpscaleBody = parse_fields(UpscaleBody, fields)
    return await answer(
        caller, upscale_request(engine, body, require_file(files, "image")), wants_png(request)
    )


def wants_png(request: Request) -> bool:
    """Whether the client asked for raw PNG bytes (``Accept: image/png``) rather than JSON."""
    first = request.headers.get("accept", "").split(",")[0]
    return first.split(";")[0].strip().lower() == "image/png"


@router.get("/engines/list")
def list_engines(caller: StabilityCallerDep) -> list[dict[str, str]]:
    """List the registered models as Stability engines."""
    return [
        {
            "id": model.id,
            "name": model.name,
            "description": model.description or model.name,
            "type": "PICTURE",
        }
        for model in caller.services.registry.models.values()
    ]


@router.get("/user/account")
def user_account(caller: StabilityCallerDep) -> dict[str, Any]:
    """Describe the caller's account as a Stability account (no personal data is kept)."""
    account = caller.services.tenants.account(caller.owner)
    return {
        "id": account["id"],
        "email": f"{account['id']}@latentq.invalid",
        "organizations": [{"id": "org-latentq", "name": "latentq", "role": "MEMBER", "is_default": True}],
    }


@router.get("/user/balance")
def user_balance(caller: StabilityCallerDep) -> dict[str, float]:
    """Report the caller's credits (a fixed large number for an unlimited account)."""
    credits = caller.services.tenants.account(caller.owner)["credits"]
    return {"credits": UNLIMITED_CREDITS if credits is None else credits}
