"""Stability REST v1, translated: existing DreamStudio clients work by changing the base URL.

Each route turns Stability's request into our contract, queues it like any job (same queue,
workers and limits), waits for it and answers in Stability's shapes, errors included
(``{"id", "name", "message"}``). See docs/STABILITY.md for the field-by-field mapping.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from api.admission import admission
from api.body_parsing import json_body_openapi, parse_body, validation_error
from api.deps import Caller, caller_with, method_scope, presented_key
from api.error_envelope import stability_error
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
from api.submit import draft_job, submit_job
from latentq.contract import GenerateRequest, JobStatus, StoredImage, UpscaleRequest
from latentq.errors import LatentqError
from latentq.records import JobRecord

log = logging.getLogger("latentq.api")

#: Balance reported by ``/v1/user/balance`` until credits exist: effectively unlimited.
UNLIMITED_CREDITS = 1_000_000_000.0


class StabilityRoute(APIRoute):
    """A route whose every failure, authentication and validation included, answers in Stability's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LatentqError as error:
                return stability_error(error)
            except RequestValidationError as error:
                return stability_error(validation_error(error.errors()))
            except RedisError as error:
                log.error("redis unavailable: %s", error)
                return stability_error(LatentqError("service_unavailable"))
            except Exception:
                log.exception("unhandled error")
                return stability_error(
                    LatentqError("internal_error", "An unexpected server error occurred, please try again.")
                )

        return route


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
    draft = await draft_job(services, caller.principal, ours, webhooks=False)
    with services.slots.holding(caller.owner):  # the answer is the image: no slot to wait in, no job
        timeout_s = services.settings.sync_timeout_s
        terms = admission(caller.principal, services, draft.spec)
        submitted = await submit_job(
            services, caller.owner, draft, wait_s=timeout_s, slot_held=True, max_jobs=terms.max_jobs,
            cost=terms.cost,
        )  # fmt: skip
    stored = finished_images(submitted.awaited, draft.spec.job_id, services.settings.sync_timeout_s)
    images = [(image.seed, await run_in_threadpool(services.store.get, image.key)) for image in stored]
    if png:
        seed, data = images[0]
        headers = {"Finish-Reason": "SUCCESS", "Seed": str(seed)}
        return Response(data, media_type="image/png", headers=headers)
    artifacts = [
        {"base64": base64.b64encode(data).decode(), "seed": seed, "finishReason": "SUCCESS"}
        for seed, data in images
    ]
    return JSONResponse({"artifacts": artifacts})


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


def multipart_openapi(model: type[BaseModel], files: tuple[str, ...]) -> dict[str, Any]:
    """Return ``openapi_extra`` documenting a multipart body of ``model``'s fields plus ``files``."""
    schema = json_body_openapi(model)["requestBody"]["content"]["application/json"]["schema"]
    schema["properties"].update({name: {"type": "string", "format": "binary"} for name in files})
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


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


def finished_images(record: JobRecord | None, job_id: str, waited_s: float) -> list[StoredImage]:
    """Return the images of the awaited job (its record after a wait of ``waited_s`` seconds); raise
    the error to answer with unless it succeeded."""
    if record is None:
        raise LatentqError("internal_error", f"Job {job_id} disappeared while it was awaited.")
    if record.status is JobStatus.SUCCEEDED:
        return record.images
    if record.status is JobStatus.FAILED and record.error:
        raise LatentqError(record.error.name, f"Job {job_id} failed: {record.error.message}")
    if record.status is JobStatus.CANCELED:  # through our API, while the answer waited for it
        raise LatentqError("job_canceled", f"Job {job_id} was canceled before it finished.")
    if not record.status.is_terminal:
        raise LatentqError(
            "timeout",
            f"Job {job_id} did not finish within {waited_s:g} s; it is still "
            f"{record.status.value}: follow it at GET /v1/jobs/{job_id}",
        )
    raise LatentqError("internal_error", f"Job {job_id} ended {record.status.value} without images.")


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
