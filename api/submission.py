"""From a validated request to a queued job: resolve it against its model, then enqueue it.

Every route that creates jobs (ours and the compatibility layers) goes through
``build_spec`` and ``enqueue_job``, so they share the rules, the queue and the limits.
"""

from __future__ import annotations

import secrets
import uuid

from api.deps import JobServices
from api.image_jobs import Inputs, check_task, read_inputs, request_task, store_inputs, upscale_size
from api.images import decode_base64, open_image
from latentq.contract import (
    GENERATE_TASK,
    MAX_SEED,
    GenerateRequest,
    JobSpec,
    OutputFormat,
    UpscaleRequest,
    WeightedPrompt,
)
from latentq.errors import LatentqError
from latentq.keys import owner_webhook_key, queue_name
from latentq.models import ModelRegistry, ModelSpec, size_problem
from latentq.presets import apply_style, style_presets
from latentq.redisbatch import CommandBatch
from latentq.rqjobs import queue_job
from latentq.storage import ImageStore
from latentq.webhooks import ensure_secret


def resolve_model(registry: ModelRegistry, model_id: str | None) -> ModelSpec:
    """Return the registered model ``model_id`` (None: the default); raise ``invalid_model``."""
    model = registry.default if model_id is None else registry.get(model_id)
    if model is None:
        known = ", ".join(registry.ids())
        raise LatentqError.for_field(
            "invalid_model", "model", f"model: unknown model '{model_id}'; registered models: {known}"
        )
    return model


def check_size(model: ModelSpec, width: int, height: int) -> None:
    """Raise a named error unless ``model`` accepts ``width`` x ``height`` pixels."""
    problem = size_problem(model.limits, width, height)
    if problem:
        name, field, message = problem
        raise LatentqError.for_field(name, field, f"{field}: {message} for model '{model.id}'")


def request_prompts(request: GenerateRequest) -> list[WeightedPrompt]:
    """Return the request's prompts as weighted prompts; raise unless they make a usable set."""
    if request.prompt is None and request.text_prompts is None:
        raise LatentqError.for_field("invalid_prompt", "prompt", "prompt: is required (or give text_prompts)")
    if request.prompt is not None and request.text_prompts is not None:
        raise LatentqError.for_field(
            "invalid_prompt", "prompt", "prompt: give either prompt or text_prompts, not both"
        )
    if request.text_prompts is not None:
        prompts = [WeightedPrompt(text=p.text, weight=p.weight) for p in request.text_prompts]
        field = "text_prompts"
    else:
        prompts = [WeightedPrompt(text=str(request.prompt), weight=1.0)]
        field = "prompt"
    if request.negative_prompt is not None:
        prompts.append(WeightedPrompt(text=request.negative_prompt, weight=-1.0))
    if not any(p.weight > 0 and p.text.strip() for p in prompts):
        raise LatentqError.for_field(
            f"invalid_{field}",
            field,
            f"{field}: at least one prompt with text and a positive weight is required",
        )
    return prompts


def build_spec(request: GenerateRequest, model: ModelSpec, inputs: Inputs | None = None) -> JobSpec:
    """Resolve ``request`` for ``model``: fill defaults, check sizes, apply the style, pick a seed.

    ``inputs`` are its decoded images (image-to-image, masking): they set the output size.
    """
    inputs = inputs or Inputs()
    defaults = model.defaults
    if inputs.size:
        width, height = inputs.size
    else:
        width = request.width if request.width is not None else defaults.width
        height = request.height if request.height is not None else defaults.height
        check_size(model, width, height)
    prompts = request_prompts(request)
    if request.style_preset is not None:
        if request.style_preset not in style_presets():
            valid = ", ".join(sorted(style_presets()))
            raise LatentqError.for_field(
                "invalid_style_preset",
                "style_preset",
                f"style_preset: unknown preset '{request.style_preset}'; valid presets: {valid}",
            )
        prompts = apply_style(request.style_preset, prompts)
    return JobSpec(
        job_id=str(uuid.uuid4()),
        model=model.id,
        prompts=prompts,
        width=width,
        height=height,
        steps=request.steps if request.steps is not None else defaults.steps,
        cfg_scale=request.cfg_scale if request.cfg_scale is not None else defaults.cfg_scale,
        samples=request.samples,
        seed=request.seed or secrets.randbelow(MAX_SEED) + 1,
        sampler=request.sampler or defaults.sampler,
        style_preset=request.style_preset,
        output_format=request.output_format,
        preview=request.preview,
        retention_s=request.retention_s,
        task=inputs.task,
        strength=inputs.strength,
        schedule_end=inputs.schedule_end,
    )


def build_upscale_spec(model: ModelSpec, size: tuple[int, int], output_format: OutputFormat) -> JobSpec:
    """Return the spec of an upscale to ``size`` on ``model`` (its input image is stored separately)."""
    defaults = model.defaults
    return JobSpec(
        job_id=str(uuid.uuid4()), model=model.id, prompts=[WeightedPrompt(text="", weight=1.0)],
        width=size[0], height=size[1], steps=defaults.steps, cfg_scale=defaults.cfg_scale, samples=1,
        seed=secrets.randbelow(MAX_SEED) + 1, sampler=defaults.sampler, output_format=output_format,
        task="upscale",
    )  # fmt: skip


async def enqueue_job(
    spec: JobSpec, services: JobServices, owner: str = "", unless_default_webhook: bool = False
) -> str | None:
    """Queue ``spec`` on its model's queue with its job record; return the record's created_at.

    One round trip on the asyncio client, with no thread, and one reply (``CommandBatch``): the
    RQ job (as RQ writes it, ``latentq.rqjobs``), our record and, for a job with a webhook, the
    owner's signing secret exist together or not at all. With ``unless_default_webhook``, nothing
    is queued and None returned if ``owner`` has a default webhook (which the job must take)."""
    settings = services.settings
    retention_s = spec.retention_s or settings.job_retention_s
    batch = CommandBatch()
    arguments = {"spec": spec.model_dump(mode="json")}
    queue_job(
        batch.pipeline, queue_name(spec.model), GENERATE_TASK, arguments, job_id=spec.job_id,
        timeout=settings.job_timeout_s, result_ttl=retention_s, failure_ttl=retention_s,
        description=f"generate {spec.job_id}",
    )  # fmt: skip
    created_at = services.records.create(spec, batch.pipeline, owner)
    if spec.webhook is not None:  # its deliveries are signed with the owner's secret
        ensure_secret(batch.pipeline, owner)
    guard = (owner_webhook_key(owner), "url") if unless_default_webhook else None
    return created_at if await batch.run(services.async_redis, guard) else None


def prepare_job(
    request: GenerateRequest, registry: ModelRegistry, store: ImageStore, max_retention_s: int | None = None
) -> JobSpec:
    """Resolve ``request`` into a job spec, its input images checked and stored; nothing is queued yet."""
    if (
        max_retention_s is not None
        and request.retention_s is not None
        and request.retention_s > max_retention_s
    ):
        raise LatentqError.for_field(
            "invalid_retention_s", "retention_s",
            f"retention_s: at most {max_retention_s} seconds (got {request.retention_s})",
        )  # fmt: skip
    task = request_task(request)
    model = resolve_model(registry, request.model)
    check_task(model, task, registry)
    inputs = read_inputs(request, model, task)
    return store_inputs(build_spec(request, model, inputs), inputs, store)


def prepare_upscale(request: UpscaleRequest, registry: ModelRegistry, store: ImageStore) -> JobSpec:
    """Resolve an upscale request into a job spec, its image checked and stored."""
    if request.model is None:
        upscalers = [model for model in registry.models.values() if "upscale" in model.tasks]
        if not upscalers:
            raise LatentqError.for_field("invalid_model", "model", "model: no upscale model is registered")
        model = upscalers[0]
    else:
        model = resolve_model(registry, request.model)
        check_task(model, "upscale", registry)
    image = open_image(decode_base64(request.image, "image"), "image", model.limits.max_pixels).convert("RGB")
    spec = build_upscale_spec(
        model, upscale_size(image, request.width, request.height, model), request.output_format
    )
    return store_inputs(spec, Inputs({"init": image}, "upscale"), store)
