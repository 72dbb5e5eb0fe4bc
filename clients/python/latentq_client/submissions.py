"""What a submit sends, built once for the sync and async clients: the JSON body of ``/v1/generate``
and ``/v1/upscale`` (images as base64) and the request carrying its ``Idempotency-Key``."""

from __future__ import annotations

import base64
import os
import uuid
from pathlib import Path
from typing import Any, Literal, TypedDict

from latentq_client._http import RequestParts

#: An input image: its bytes, or the path of its file (PNG, JPEG or WebP).
ImageInput = bytes | str | os.PathLike[str]
OutputFormat = Literal["png", "jpeg", "webp"]
MaskSource = Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]
WebhookEvent = Literal["started", "progress", "completed"]
#: The fields whose values are images, sent as base64.
IMAGE_FIELDS = ("init_image", "mask_image", "control_image", "image")


class WebhookOptions(TypedDict, total=False):
    """Where a job's webhook goes (the account's default when left out)."""

    webhook_url: str
    webhook_events: list[WebhookEvent]


class GenerateOptions(WebhookOptions, total=False):
    """The fields of ``POST /v1/generate`` besides ``prompt`` (README: the API); left out, the model's
    defaults apply."""

    model: str
    negative_prompt: str
    #: ``[{"text", "weight"}]``, instead of ``prompt``.
    text_prompts: list[dict[str, Any]]
    width: int
    height: int
    steps: int
    cfg_scale: float
    samples: int
    #: 0 lets the service pick one (and report it).
    seed: int
    sampler: str
    style_preset: str
    output_format: OutputFormat
    retention_s: int
    #: A small JPEG every 5 steps on the event stream (``Event.preview_jpeg``).
    preview: bool
    #: Image-to-image: the output takes this image's size.
    init_image: ImageInput
    init_image_mode: Literal["IMAGE_STRENGTH", "STEP_SCHEDULE"]
    #: 0-1: how much of the init image to keep (1 keeps it all).
    image_strength: float
    step_schedule_start: float
    step_schedule_end: float
    mask_image: ImageInput
    mask_source: MaskSource
    #: Up to 4 LoRA adapters ``[{"id", "weight"}]`` (``GET /v1/loras``).
    loras: list[dict[str, Any]]
    #: A ControlNet's control image (sketch, edges, depth, pose); alone, the output takes its size.
    control_image: ImageInput
    #: A registered ControlNet (``GET /v1/controlnets``); left out, the model family's first.
    control_model: str
    #: 0-2, default 1; 0 is the uncontrolled image.
    control_strength: float
    control_start: float
    control_end: float
    #: "canny": the worker conditions on the image's Canny edges (send a photo).
    control_preprocess: Literal["none", "canny"]


class UpscaleOptions(WebhookOptions, total=False):
    """The fields of ``POST /v1/upscale`` besides ``image``: give ``width`` or ``height`` (pixels), or
    neither for twice the image."""

    model: str
    width: int
    height: int
    output_format: OutputFormat


def image_base64(image: ImageInput) -> str:
    """Return ``image`` (bytes, or a file's path) as base64 text."""
    data = image if isinstance(image, bytes) else Path(image).read_bytes()
    return base64.b64encode(data).decode("ascii")


def request_body(fields: dict[str, Any]) -> dict[str, Any]:
    """Return the JSON body of ``fields``: images in base64, fields left as None dropped."""
    body = {name: value for name, value in fields.items() if value is not None}
    for name in IMAGE_FIELDS:
        if name in body:
            body[name] = image_base64(body[name])
    return body


def submit_request(path: str, body: dict[str, Any], idempotency_key: str | None) -> RequestParts:
    """Return the submit of ``body`` to ``path``, with ``idempotency_key`` or a fresh one: every
    retry of this submit sends the same key, so a retried submit never makes two jobs."""
    key = idempotency_key or str(uuid.uuid4())
    return RequestParts("POST", path, json=body, headers={"Idempotency-Key": key})


def generate_request(
    prompt: str | None, idempotency_key: str | None, options: GenerateOptions
) -> RequestParts:
    """Return the ``POST /v1/generate`` of ``prompt`` and ``options``."""
    return submit_request("/v1/generate", request_body({"prompt": prompt, **options}), idempotency_key)


def upscale_request(image: ImageInput, idempotency_key: str | None, options: UpscaleOptions) -> RequestParts:
    """Return the ``POST /v1/upscale`` of ``image`` and ``options``."""
    return submit_request("/v1/upscale", request_body({"image": image, **options}), idempotency_key)


def list_request(status: str | None, limit: int | None, cursor: str | None) -> RequestParts:
    """Return the ``GET /v1/jobs`` of one page of the caller's jobs, newest first."""
    return RequestParts("GET", "/v1/jobs", params={"status": status, "limit": limit, "cursor": cursor})
