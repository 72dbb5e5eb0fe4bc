"""Stability REST v1, translated: existing DreamStudio clients work by changing the base URL.

Each route turns Stability's request into our contract, queues it like any job (same queue,
workers and limits), waits for it and answers in Stability's shapes, errors included
(``{"id", "name", "message"}``). See docs/STABILITY.md for the field-by-field mapping.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import uuid
from collections.abc import Callable, Coroutine
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict, Field
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from api.deps import (
    AsyncRedisDep,
    ImageStoreDep,
    JobRecordsDep,
    RedisDep,
    RegistryDep,
    SettingsDep,
    check_api_key,
)
from api.submission import build_spec, enqueue_job
from api.validation import json_body_openapi, parse_body, validation_error
from api.waiting import wait_for_job
from latentq.contract import MAX_SEED, GenerateRequest, JobSpec, JobStatus, Sampler, StoredImage, TextPrompt
from latentq.errors import LatentqError, stability_name
from latentq.jobs import JobRecord
from latentq.settings import ApiSettings

log = logging.getLogger("latentq.api")

#: Balance reported by ``/v1/user/balance`` until credits exist: effectively unlimited.
UNLIMITED_CREDITS = 1_000_000_000.0

#: Stability's side rule for text-to-image: multiples of 64, at least 128.
SIDE_MULTIPLE = 64
MIN_SIDE = 128


def stability_error(error: LatentqError) -> JSONResponse:
    """Render ``error`` in Stability's shape, with our status."""
    body = {"id": uuid.uuid4().hex, "name": stability_name(error.name), "message": error.message}
    return JSONResponse(body, status_code=error.status)


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


def require_stability_key(request: Request, settings: SettingsDep) -> str:
    """Return the caller's key from ``Authorization: Bearer <key>`` or a bare ``Authorization: <key>``."""
    header = request.headers.get("authorization", "").strip()
    if not header:
        raise LatentqError("unauthorized", "missing authorization header")
    scheme, _, token = header.partition(" ")
    return check_api_key(token.strip() if scheme.lower() == "bearer" else header, settings)


StabilityKeyDep = Annotated[str, Depends(require_stability_key)]

router = APIRouter(prefix="/v1", tags=["stability-v1"], route_class=StabilityRoute)


ClipGuidancePreset = Literal["FAST_BLUE", "FAST_GREEN", "NONE", "SIMPLE", "SLOW", "SLOWER", "SLOWEST"]


class TextToImageBody(BaseModel):
    """Stability v1's ``TextToImageRequestBody``, plus its later ``style_preset`` and ``extras``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    text_prompts: list[TextPrompt] = Field(min_length=1, max_length=16)
    height: int | None = Field(None, description="Multiple of 64, at least 128; omitted: the engine's.")
    width: int | None = Field(None, description="Multiple of 64, at least 128; omitted: the engine's.")
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


def wants_png(request: Request) -> bool:
    """Whether the client asked for raw PNG bytes (``Accept: image/png``) rather than JSON."""
    first = request.headers.get("accept", "").split(",")[0]
    return first.split(";")[0].strip().lower() == "image/png"


def check_stability_sides(body: TextToImageBody) -> None:
    """Raise ``invalid_height_or_width`` unless each given side is a multiple of 64, at least 128."""
    for field, value in (("width", body.width), ("height", body.height)):
        if value is not None and (value % SIDE_MULTIPLE or value < MIN_SIDE):
            raise LatentqError.for_field(
                f"invalid_{field}",
                field,
                f"{field}: must be a multiple of {SIDE_MULTIPLE} and at least {MIN_SIDE} (got {value})",
            )


@router.post(
    "/generation/{engine_id}/text-to-image",
    responses={200: {"content": {"image/png": {}}, "description": "The artifacts, or the PNG"}},
    openapi_extra=json_body_openapi(TextToImageBody),
)
async def text_to_image(
    engine_id: str,
    request: Request,
    _key: StabilityKeyDep,
    settings: SettingsDep,
    registry: RegistryDep,
    redis: RedisDep,
    async_redis: AsyncRedisDep,
    records: JobRecordsDep,
    store: ImageStoreDep,
) -> Response:
    """Generate images from text prompts and answer with them (Stability's ``textToImage``)."""
    model = registry.get(engine_id)
    if model is None:
        raise LatentqError("not_found", f"The specified engine (ID {engine_id}) was not found.")
    body = parse_body(TextToImageBody, await request.body())
    check_stability_sides(body)
    png = wants_png(request)
    if png and body.samples > 1:
        raise LatentqError.for_field(
            "invalid_samples",
            "samples",
            "samples: Sample count may only be greater than 1 when the accept header is set to "
            "`application/json`",
        )
    ours = GenerateRequest(
        model=model.id, text_prompts=body.text_prompts, width=body.width, height=body.height,
        steps=body.steps, cfg_scale=body.cfg_scale, samples=body.samples, seed=body.seed,
        sampler=body.sampler, style_preset=body.style_preset,
    )  # fmt: skip
    spec = build_spec(ours, model)
    await run_in_threadpool(enqueue_job, spec, settings, redis, records)
    record = await wait_for_job(async_redis, records, spec.job_id, settings.sync_timeout_s)
    images = [
        (image.seed, await run_in_threadpool(store.get, image.key))
        for image in succeeded(record, spec, settings)
    ]
    if png:
        seed, data = images[0]
        return Response(data, media_type="image/png", headers={"Finish-Reason": "SUCCESS", "Seed": str(seed)})
    artifacts = [
        {"base64": base64.b64encode(data).decode(), "seed": seed, "finishReason": "SUCCESS"}
        for seed, data in images
    ]
    return JSONResponse({"artifacts": artifacts})


def succeeded(record: JobRecord | None, spec: JobSpec, settings: ApiSettings) -> list[StoredImage]:
    """Return the images of the awaited job; raise the error to answer with unless it succeeded."""
    job_id = spec.job_id
    if record is None:
        raise LatentqError("internal_error", f"Job {job_id} disappeared while it was awaited.")
    if record.status is JobStatus.SUCCEEDED:
        return record.images
    if record.status is JobStatus.FAILED and record.error:
        raise LatentqError(record.error.name, f"Job {job_id} failed: {record.error.message}")
    if not record.status.is_terminal:
        raise LatentqError(
            "timeout",
            f"Job {job_id} did not finish within {settings.sync_timeout_s:g} s; it is still "
            f"{record.status.value}: follow it at GET /v1/jobs/{job_id}",
        )
    raise LatentqError("internal_error", f"Job {job_id} ended {record.status.value} without images.")


@router.get("/engines/list")
def list_engines(_key: StabilityKeyDep, registry: RegistryDep) -> list[dict[str, str]]:
    """List the registered models as Stability engines."""
    return [
        {
            "id": model.id,
            "name": model.name,
            "description": model.description or model.name,
            "type": "PICTURE",
        }
        for model in registry.models.values()
    ]


@router.get("/user/account")
def user_account(key: StabilityKeyDep) -> dict[str, Any]:
    """Describe the caller's key as a Stability account (one per key; no personal data kept)."""
    user_id = f"user-{hashlib.sha256(key.encode()).hexdigest()[:16]}"
    return {
        "id": user_id,
        "email": f"{user_id}@latentq.invalid",
        "organizations": [{"id": "org-latentq", "name": "latentq", "role": "MEMBER", "is_default": True}],
    }


@router.get("/user/balance")
def user_balance(_key: StabilityKeyDep) -> dict[str, float]:
    """Report the caller's credits: unlimited (a fixed large number) until credits exist."""
    return {"credits": UNLIMITED_CREDITS}
