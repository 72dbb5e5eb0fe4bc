"""The job contract between the API and the workers: requests, job specs, statuses, results.

The API validates a ``GenerateRequest``, resolves it into a ``JobSpec`` and enqueues that
(JSON) for the RQ function named ``GENERATE_FUNCTION``; the worker trusts the spec. Clients read
a ``JobPublic`` (``latentq.views``).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

# The RQ functions, by the dotted paths jobs are queued under; the API never imports the worker or
# the dispatcher. They live in ``worker.job_functions`` and ``dispatcher.delivery``; jobs are still
# queued under 0.1's paths (thin aliases), so 0.1 workers and dispatchers run them during an
# upgrade. 0.3 queues the new paths; the aliases go in 0.4 (docs/ARCHITECTURE.md).
#: The RQ function that runs a generation job.
GENERATE_FUNCTION = "worker.tasks.generate"
#: The RQ function that delivers one webhook event (run by ``python -m dispatcher``).
DELIVER_FUNCTION = "latentq.dispatcher.deliver"

#: Samplers a request may name: Stability v1's ten, their Karras-sigma variants where diffusers
#: has them, UniPC and LCM. Each maps to a diffusers scheduler (worker/diffusion/schedulers.py).
Sampler = Literal[
    "DDIM", "DDPM", "K_DPMPP_2M", "K_DPMPP_2S_ANCESTRAL", "K_DPM_2", "K_DPM_2_ANCESTRAL",
    "K_EULER", "K_EULER_ANCESTRAL", "K_HEUN", "K_LMS",
    "K_DPMPP_2M_KARRAS", "K_DPMPP_2S_ANCESTRAL_KARRAS", "K_DPM_2_KARRAS", "K_DPM_2_ANCESTRAL_KARRAS",
    "K_EULER_KARRAS", "K_HEUN_KARRAS", "K_LMS_KARRAS",
    "UNIPC", "LCM",
]  # fmt: skip
SAMPLERS: tuple[str, ...] = Sampler.__args__  # type: ignore[attr-defined]

#: Image file formats a job can produce.
OutputFormat = Literal["png", "jpeg", "webp"]

#: The kind of a job: draw from text, redraw an image, repaint a masked part of it, or enlarge it.
JobKind = Literal["text-to-image", "image-to-image", "masking", "upscale"]
#: How an init image's influence is given (Stability v1's modes).
InitImageMode = Literal["IMAGE_STRENGTH", "STEP_SCHEDULE"]
#: Where a mask comes from (Stability v1): white or black pixels of a mask image, or the init image's alpha.
MaskSource = Literal["MASK_IMAGE_WHITE", "MASK_IMAGE_BLACK", "INIT_IMAGE_ALPHA"]

#: What the API may do to a control image before the ControlNet sees it: nothing (it is already a
#: sketch, edge map, depth map or pose), or Canny edge detection of a photo (done by the worker).
ControlPreprocess = Literal["none", "canny"]

#: Job events a webhook can be sent for: the job started, a progress update (throttled, never
#: retried), the job ended (succeeded, failed or canceled; retried until delivered).
WebhookEvent = Literal["started", "progress", "completed"]

#: Longest webhook URL accepted, characters.
MAX_WEBHOOK_URL_CHARS = 2048

#: Largest seed; 0 asks the service to choose one.
MAX_SEED = 4_294_967_295

#: Most prompts one request may carry.
MAX_PROMPTS = 16

#: Longest prompt text, characters (Stability's limit).
MAX_PROMPT_CHARS = 2000

#: Most LoRA adapters one request may name.
MAX_LORAS = 4
#: Bounds of a LoRA adapter's weight (its LoRA scale: 0 = no effect, 1 = as trained, negative = away).
MIN_LORA_WEIGHT = -2.0
MAX_LORA_WEIGHT = 2.0


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


class TextPrompt(BaseModel):
    """One weighted prompt, as in Stability v1: a negative weight makes it a negative prompt."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    text: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS, description="The prompt text.")
    weight: float = Field(
        1.0, allow_inf_nan=False, ge=-100, le=100,
        description="Relative weight among prompts of the same sign; negative: a negative prompt.",
    )  # fmt: skip


class WeightedPrompt(BaseModel):
    """A prompt of a job spec: validated text (no length limit: a style may lengthen it) and weight."""

    model_config = ConfigDict(frozen=True)

    text: str
    weight: float


class LoraChoice(BaseModel):
    """One adapter a request names: ``{"id", "weight"}`` (weight omitted: the adapter's default)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    id: str = Field(min_length=1, max_length=64, description="A registered adapter id (GET /v1/loras).")
    weight: float | None = Field(
        None, allow_inf_nan=False, ge=MIN_LORA_WEIGHT, le=MAX_LORA_WEIGHT,
        description="LoRA scale: 0 no effect, 1 as trained; omitted: the adapter's default_weight.",
    )  # fmt: skip


class LoraWeight(BaseModel):
    """An adapter of a job spec, with its final weight."""

    model_config = ConfigDict(frozen=True)

    id: str
    weight: float


class WebhookFields(BaseModel):
    """The webhook fields every job-creating request accepts."""

    webhook_url: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_WEBHOOK_URL_CHARS,
        description="http(s) URL to POST signed job events to; omitted: the API key's default webhook.",
    )
    webhook_events: list[WebhookEvent] | None = Field(
        None,
        min_length=1,
        max_length=3,
        description="Events to send: started, progress, completed; omitted: the default's, or [completed].",
    )


class GenerateRequest(WebhookFields):
    """Body of ``POST /v1/generate``: one text-to-image job. Omitted fields take the model's defaults."""

    # strict: "7" is not a number and true is not 1; a client bug should surface, not be guessed at.
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="Registered model id; omitted: the default model.")
    prompt: str | None = Field(None, min_length=1, max_length=MAX_PROMPT_CHARS, description="What to draw.")
    negative_prompt: str | None = Field(
        None, min_length=1, max_length=MAX_PROMPT_CHARS, description="What to steer away from."
    )
    text_prompts: list[TextPrompt] | None = Field(
        None, min_length=1, max_length=MAX_PROMPTS, description="Weighted prompts (instead of prompt)."
    )
    width: int | None = Field(None, description="Image width, pixels, within the model's limits.")
    height: int | None = Field(None, description="Image height, pixels: as width.")
    steps: int | None = Field(None, ge=1, le=150, description="Denoising steps; omitted: the model's.")
    cfg_scale: float | None = Field(None, ge=0, le=35, description="Classifier-free guidance scale.")
    samples: int = Field(1, ge=1, le=10, description="Images to generate; image i uses seed + i.")
    seed: int = Field(0, ge=0, le=MAX_SEED, description="Random seed; 0 lets the service choose.")
    sampler: Sampler | None = Field(None, description="Sampler (diffusers scheduler); omitted: the model's.")
    style_preset: str | None = Field(None, description="A style preset name (see GET /v1/styles).")
    output_format: OutputFormat = Field("png", description="File format of the images.")
    preview: bool = Field(False, description="Publish a small JPEG preview every few denoising steps.")
    retention_s: int | None = Field(
        None, ge=60, description="Seconds the job stays readable; omitted: the service's retention."
    )
    init_image: str | None = Field(
        None, description="Base64 PNG, JPEG or WebP to start from (image-to-image); sets the output size."
    )
    init_image_mode: InitImageMode = Field(
        "IMAGE_STRENGTH", description="How the init image's influence is given."
    )
    image_strength: float | None = Field(
        None, ge=0, le=1, description="IMAGE_STRENGTH: 1 keeps the init image, 0 ignores it; default 0.35."
    )
    step_schedule_start: float | None = Field(
        None,
        ge=0,
        le=1,
        description="STEP_SCHEDULE: share of the schedule run, from the noisy end; default 0.65.",
    )
    step_schedule_end: float | None = Field(
        None,
        ge=0,
        le=1,
        description="STEP_SCHEDULE: share of the schedule left unrun at the clean end; default 0.",
    )
    mask_source: MaskSource | None = Field(None, description="Masking: where the mask comes from.")
    mask_image: str | None = Field(
        None,
        description="Base64 mask (MASK_IMAGE_WHITE/BLACK), the init image's size; grey = partial repaint.",
    )
    loras: list[LoraChoice] | None = Field(
        None, max_length=MAX_LORAS, description="LoRA adapters to apply (GET /v1/loras), each with a weight."
    )
    control_image: str | None = Field(
        None,
        description="Base64 PNG, JPEG or WebP control image for a ControlNet (sketch, edges, depth, pose); "
        "sets the output size unless init_image does (then it must be the init image's size).",
    )
    control_model: str | None = Field(
        None, description="Registered ControlNet id (GET /v1/controlnets); omitted: the model family's first."
    )
    control_strength: float | None = Field(
        None, ge=0, le=2, description="ControlNet conditioning scale; 0 ignores the control image; default 1."
    )
    control_start: float | None = Field(
        None, ge=0, le=1, description="Share of the schedule before the ControlNet acts; default 0."
    )
    control_end: float | None = Field(
        None, ge=0, le=1, description="Share of the schedule after which it stops acting; default 1."
    )
    control_preprocess: ControlPreprocess | None = Field(
        None, description="none (default): the control image is used as sent; canny: its Canny edges are."
    )


class UpscaleRequest(WebhookFields):
    """Body of ``POST /v1/upscale``: enlarge one image. Give ``width`` or ``height``, or neither (x2)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    model: str | None = Field(None, description="A registered upscale model; omitted: the first one.")
    image: str = Field(description="Base64 PNG, JPEG or WebP to enlarge.")
    width: int | None = Field(None, ge=1, description="Output width, pixels (keeps the aspect ratio).")
    height: int | None = Field(None, ge=1, description="Output height, pixels (keeps the aspect ratio).")
    output_format: OutputFormat = Field("png", description="File format of the image.")


class WebhookTarget(BaseModel):
    """Where a job's events go: a URL (checked against the SSRF rules) and the events wanted."""

    model_config = ConfigDict(frozen=True)

    url: str
    events: list[WebhookEvent] = Field(default_factory=lambda: list[WebhookEvent](["completed"]))


class JobSpec(BaseModel):
    """What a worker receives: a request resolved against its model, with a concrete seed.

    ``prompts`` are final: defaults filled, the style preset applied, ``prompt`` and
    ``negative_prompt`` turned into weights 1 and -1.
    """

    job_id: str
    model: str
    prompts: list[WeightedPrompt] = Field(min_length=1)
    width: int
    height: int
    steps: int
    cfg_scale: float
    samples: int
    seed: int = Field(ge=1, le=MAX_SEED)
    sampler: Sampler
    style_preset: str | None = None
    output_format: OutputFormat = "png"
    #: The job's kind (the field keeps its wire name, ``task``, in specs and public views).
    task: JobKind = "text-to-image"
    preview: bool = False
    #: Seconds the job's record, events and RQ result live; None: the service's retention.
    retention_s: int | None = None
    #: Object keys of the job's input images, stored by the API (already decoded and checked).
    init_image_key: str | None = None
    #: A greyscale mask, white = repaint fully, black = keep (normalised by the API whatever the source).
    mask_image_key: str | None = None
    #: A ControlNet's control image (RGB), stored by the API; None: no ControlNet.
    control_image_key: str | None = None
    #: The registered ControlNet the job is conditioned by, with its settings (``GenerateRequest``).
    control_model: str | None = None
    control_strength: float = 1.0
    control_start: float = 0.0
    control_end: float = 1.0
    control_preprocess: ControlPreprocess = "none"
    #: Share of the noise schedule run (diffusers' ``strength``; Stability's step_schedule_start).
    strength: float | None = None
    #: Share of the schedule left unrun at the clean end (Stability's step_schedule_end).
    schedule_end: float = 0.0
    #: Where the job's events are POSTed (signed with its API key's secret), if anywhere.
    webhook: WebhookTarget | None = None
    #: The S3 folder of the job's objects (``latentq.keys.job_folder``); "" in specs queued before
    #: objects were kept per account, whose objects lie under the bare job id.
    folder: str = ""
    #: The ``X-Request-Id`` of the request that submitted the job (its log lines carry it); None in
    #: specs queued before requests had ids.
    request_id: str | None = None
    #: LoRA adapters active for the job, in order, with their final weights; [] for the base model.
    loras: list[LoraWeight] = Field(default_factory=list)

    @property
    def account(self) -> str:
        """The public id of the account that submitted the job (its folder's first part; "" in
        specs queued before objects were kept per account)."""
        return self.folder.partition("/")[0] if "/" in self.folder else ""

    @property
    def object_folder(self) -> str:
        """The S3 folder the job's images and inputs are stored in."""
        return self.folder or self.job_id

    def image_seeds(self) -> list[int]:
        """Return the seed of each image: image i uses seed + i, wrapping past MAX_SEED to 1."""
        return [(self.seed - 1 + index) % MAX_SEED + 1 for index in range(self.samples)]


class StoredImage(BaseModel):
    """An image as the job record keeps it: where it is stored and how it was made."""

    key: str
    seed: int
    width: int
    height: int
    content_type: str = "image/png"
    #: Whether the model's safety checker flagged the image; None: not checked (safety ``off``).
    nsfw: bool | None = None
    #: Whether the image was replaced by a black one because it was flagged (safety ``filter``).
    filtered: bool = False


class JobError(BaseModel):
    """Why a job failed: a name from the error table and a message."""

    name: str
    message: str


class WebhookDelivery(BaseModel):
    """How the deliveries of one webhook event type of a job went (the latest, for progress)."""

    state: Literal["delivered", "retrying", "failed", "refused", "disabled", "dropped"] = Field(
        description="delivered; retrying (next_attempt_at says when); failed (attempts spent or not "
        "retried); refused (the URL resolved to a forbidden address); disabled (the URL answered 410 "
        "Gone); dropped (stale: the job had moved on)."
    )
    attempts: int = Field(description="Attempts made so far.")
    status_code: int | None = Field(None, description="The receiver's HTTP status at the last attempt.")
    error: str | None = Field(None, description="Why the last attempt failed.")
    updated_at: str
    next_attempt_at: str | None = None
