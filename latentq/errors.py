"""The one error table: every failure latentq reports maps to (HTTP status, name, message).

Routes render these as ``{"error": {"name", "message", ...}}``; job records carry
``{"name", "message"}``. Later compatibility layers render the same table in their shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ErrorSpec:
    """One row of the error table."""

    status: int
    name: str
    message: str


#: Fields of a generation request; each has its own ``invalid_<field>`` error name.
REQUEST_FIELDS = (
    "model",
    "prompt",
    "negative_prompt",
    "text_prompts",
    "width",
    "height",
    "steps",
    "cfg_scale",
    "samples",
    "seed",
    "sampler",
    "style_preset",
    "output_format",
    "preview",
    "retention_s",
    "init_image",
    "init_image_mode",
    "image_strength",
    "step_schedule_start",
    "step_schedule_end",
    "mask_source",
    "mask_image",
    "control_image",
    "control_model",
    "control_strength",
    "control_start",
    "control_end",
    "control_preprocess",
    "image",
    "webhook_url",
    "webhook_events",
)

#: Request fields whose errors have another name than ``invalid_<field>`` (one name for all of a
#: request's LoRA problems, malformed or unknown).
FIELD_ERROR_NAMES = {"loras": "invalid_lora"}

#: Fields only OpenAI's image requests have (``api/routes/openai_images.py``): named alike.
OPENAI_REQUEST_FIELDS = ("n", "response_format", "quality", "style", "user")

_ROWS = [
    ErrorSpec(400, "invalid_json", "The request body is not valid JSON."),
    ErrorSpec(400, "invalid_request", "The request is not valid."),
    ErrorSpec(413, "payload_too_large", "The request body is too large."),
    ErrorSpec(400, "unknown_field", "The request has a field this endpoint does not accept."),
    *(
        ErrorSpec(400, f"invalid_{field}", f"The field {field} is not valid.")
        for field in (*REQUEST_FIELDS, *OPENAI_REQUEST_FIELDS)
    ),
    ErrorSpec(400, "invalid_size", "width x height is not a size this model accepts."),
    ErrorSpec(400, "invalid_lora", "A LoRA adapter is unknown, not made for this model, or badly given."),
    ErrorSpec(400, "invalid_pixel_count", "width x height is outside the model's pixel-count limits."),
    ErrorSpec(400, "invalid_image", "An image could not be read: it is malformed, truncated or too large."),
    ErrorSpec(400, "invalid_file_size", "An uploaded file is larger than allowed."),
    ErrorSpec(400, "invalid_mime_type", "An uploaded image is not PNG, JPEG or WebP."),
    ErrorSpec(400, "invalid_image_dimensions", "The images' sizes do not fit together or the model."),
    ErrorSpec(401, "unauthorized", "A valid API key is required: send 'Authorization: Bearer <key>'."),
    ErrorSpec(402, "insufficient_balance", "The account's credits do not cover this job."),
    ErrorSpec(403, "permission_denied", "This API key may not do that."),
    ErrorSpec(404, "not_found", "No such resource."),
    ErrorSpec(405, "method_not_allowed", "This method is not allowed here."),
    ErrorSpec(409, "job_finished", "The job has already finished; it cannot be canceled."),
    ErrorSpec(409, "job_canceled", "The job was canceled before it finished."),
    # OpenAI's name: its routes answer it when every image of a job was filtered (safety "filter").
    ErrorSpec(400, "content_policy_violation", "The safety checker filtered every image of this request."),
    ErrorSpec(409, "idempotency_conflict", "This Idempotency-Key was used with a different request."),
    ErrorSpec(400, "invalid_idempotency_key", "The Idempotency-Key header is not valid."),
    ErrorSpec(429, "rate_limited", "Too many requests; retry later."),
    ErrorSpec(429, "too_many_jobs", "This account has as many jobs queued or running as it may."),
    ErrorSpec(
        429,
        "too_many_streams",
        "This account has too many open event streams and waiting requests; close some, or poll.",
    ),
    ErrorSpec(503, "service_busy", "This API process holds as many open streams as it may; retry shortly."),
    ErrorSpec(503, "queue_full", "The queue is full; retry later."),
    ErrorSpec(503, "service_unavailable", "A backing service is unreachable; retry later."),
    ErrorSpec(504, "timeout", "The job ran longer than its time limit."),
    ErrorSpec(507, "out_of_memory", "The worker ran out of memory for this job."),
    ErrorSpec(500, "worker_lost", "The worker running this job stopped before finishing it."),
    ErrorSpec(502, "storage_error", "The image store failed."),
    ErrorSpec(500, "generation_failed", "Image generation failed."),
    ErrorSpec(500, "internal_error", "An unexpected error occurred."),
]

#: The table, by name.
ERRORS: dict[str, ErrorSpec] = {row.name: row for row in _ROWS}

#: Seconds a client should wait before trying again, by error name (sent as ``Retry-After``).
RETRY_AFTER_S = {
    "service_unavailable": 1,
    "queue_full": 1,
    "rate_limited": 1,
    "too_many_streams": 5,
    "service_busy": 5,
}


def retry_after(error: LatentqError) -> str | None:
    """The ``Retry-After`` value (whole seconds) ``error`` is answered with, if any."""
    if error.retry_after_s is not None:
        return str(max(1, math.ceil(error.retry_after_s)))
    seconds = RETRY_AFTER_S.get(error.name)
    return None if seconds is None else str(seconds)


class LatentqError(Exception):
    """A failure with a name from the error table, an optional specific message and details."""

    def __init__(
        self, name: str, message: str | None = None, retry_after_s: float | None = None, **details: Any
    ) -> None:
        if name not in ERRORS:
            raise ValueError(f"unknown error name {name!r}")
        self.name = name
        #: Seconds the client should wait before trying again (``Retry-After``), when known better
        #: than the table's ``RETRY_AFTER_S``.
        self.retry_after_s = retry_after_s
        self.message = message or ERRORS[name].message
        self.details = details
        super().__init__(f"{name}: {self.message}")

    @classmethod
    def for_field(cls, name: str, field: str, message: str) -> LatentqError:
        """Return error ``name`` about one request ``field``, shaped like the validator's errors."""
        return cls(name, message, field=field, errors=[{"field": field, "message": message}])

    @property
    def status(self) -> int:
        """The HTTP status this error answers with."""
        return ERRORS[self.name].status

    def to_dict(self) -> dict[str, Any]:
        """Return the error as ``{"name", "message", **details}``."""
        return {"name": self.name, "message": self.message, **self.details}


# Stability v1's view of the table: its error names for ours. Other 4xx names pass through;
# any other invalid_* is "bad_request" and every 5xx is "server_error".
_STABILITY_NAMES = {
    "invalid_width": "invalid_height_or_width",
    "invalid_height": "invalid_height_or_width",
    "invalid_size": "invalid_height_or_width",
    "invalid_pixel_count": "invalid_pixel_count",
    "invalid_samples": "invalid_samples",
    "invalid_text_prompts": "invalid_prompts",
    "invalid_mask_image": "invalid_mask_image",
    "invalid_file_size": "invalid_file_size",
    "invalid_mime_type": "invalid_mime_type",
    "invalid_image_dimensions": "invalid_image_dimensions",
    "invalid_json": "bad_request",
    "invalid_request": "bad_request",
    "unknown_field": "bad_request",
}


def stability_name(name: str) -> str:
    """Return Stability v1's error name for our error ``name``."""
    if name in _STABILITY_NAMES:
        return _STABILITY_NAMES[name]
    if ERRORS[name].status >= 500:
        return "server_error"
    return "bad_request" if name.startswith("invalid_") else name
