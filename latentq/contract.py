"""The job contract between the API and the workers: requests, job specs, statuses, results.

The API validates a ``GenerateRequest``, resolves it into a ``JobSpec`` and enqueues that
(JSON) for the task named ``GENERATE_TASK``; the worker trusts the spec. Clients read a
``JobPublic``.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

#: Dotted path of the worker task; the API enqueues by this name and never imports the worker.
GENERATE_TASK = "worker.tasks.generate"

#: Samplers a request may name (Stability's names), each mapped to a diffusers scheduler.
Sampler = Literal["K_EULER", "K_EULER_ANCESTRAL", "DDIM", "K_DPMPP_2M"]
SAMPLERS: tuple[str, ...] = Sampler.__args__  # type: ignore[attr-defined]

#: Largest seed; 0 asks the service to choose one.
MAX_SEED = 4_294_967_295


class JobStatus(StrEnum):
    """A job's public status."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def is_terminal(self) -> bool:
        """Whether the job can no longer change."""
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)


# RQ's status names mapped to ours: the one place the two vocabularies meet.
_RQ_STATUS = {
    "created": JobStatus.QUEUED,
    "queued": JobStatus.QUEUED,
    "deferred": JobStatus.QUEUED,
    "scheduled": JobStatus.QUEUED,
    "started": JobStatus.RUNNING,
    "finished": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "stopped": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
}


def status_from_rq(rq_status: str) -> JobStatus:
    """Return our status for an RQ job status name."""
    return _RQ_STATUS[rq_status]


class ModelLimits(BaseModel):
    """What sizes a model accepts, in pixels."""

    min_side: int = 64
    max_side: int = 1024
    multiple: int = 8


#: Limits of the served model. (Issue 3's model registry makes these per model.)
DEFAULT_LIMITS = ModelLimits()


class GenerateRequest(BaseModel):
    """Body of ``POST /v1/generate``: one text-to-image job."""

    # strict: "7" is not a number and true is not 1; a client bug should surface, not be guessed at.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=2000, description="What to draw.")
    negative_prompt: str | None = Field(None, max_length=2000, description="What to steer away from.")
    width: int = Field(512, description="Image width, pixels: a multiple of 8 within the model's limits.")
    height: int = Field(512, description="Image height, pixels: a multiple of 8 within the model's limits.")
    steps: int = Field(30, ge=1, le=150, description="Denoising steps.")
    cfg_scale: float = Field(7.0, ge=0, le=35, description="Classifier-free guidance scale.")
    samples: int = Field(1, ge=1, le=10, description="Images to generate; image i uses seed + i.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Random seed; 0 lets the service choose.")
    sampler: Sampler = Field("K_EULER", description="Sampler (diffusers scheduler) to use.")

    @field_validator("width", "height")
    @classmethod
    def _check_side(cls, value: int, info: ValidationInfo) -> int:
        check_side(str(info.field_name), value, DEFAULT_LIMITS)
        return value


def check_side(field: str, value: int, limits: ModelLimits) -> None:
    """Raise ``ValueError`` unless ``value`` pixels is a valid ``field`` (width/height) for ``limits``."""
    if value % limits.multiple:
        raise ValueError(f"{field} must be a multiple of {limits.multiple}")
    if not limits.min_side <= value <= limits.max_side:
        raise ValueError(f"{field} must be between {limits.min_side} and {limits.max_side}")


class JobSpec(BaseModel):
    """What a worker receives: a validated request with its job id, model and a concrete seed."""

    job_id: str
    model: str
    prompt: str
    negative_prompt: str | None
    width: int
    height: int
    steps: int
    cfg_scale: float
    samples: int
    seed: int = Field(ge=1, le=MAX_SEED)
    sampler: Sampler

    def image_seeds(self) -> list[int]:
        """Return the seed of each image: image i uses seed + i."""
        return [self.seed + index for index in range(self.samples)]


class StoredImage(BaseModel):
    """An image as the job record keeps it: where it is stored and how it was made."""

    key: str
    seed: int
    width: int
    height: int


class JobError(BaseModel):
    """Why a job failed: a name from the error table and a message."""

    name: str
    message: str


class ImagePublic(BaseModel):
    """An image as clients see it."""

    url: str
    seed: int
    width: int
    height: int


class JobPublic(BaseModel):
    """A job as clients see it (``GET /v1/jobs/{id}``, and the answer to a submit)."""

    id: str
    status: JobStatus
    model: str
    images: list[ImagePublic]
    error: JobError | None
    created_at: str
    started_at: str | None
    finished_at: str | None
    request: dict = Field(description="The parameters the job runs with, the chosen seed included.")
