"""From a parsed request to a job spec: the pure validation step, with no I/O.

Every route that creates jobs (ours and the compatibility layers) turns its request into a
``JobDraft`` here (``validate_request``): the model resolved, every rule checked
with a named error, defaults filled, the style applied, the seed chosen, input images decoded and
the webhook target checked. ``api.submit.submit_job`` then stores, queues and waits for it.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field
from typing import Any

from PIL.Image import Image

from api.control_inputs import control_settings, read_control_image
from api.image_inputs import Inputs, check_kind, read_inputs, request_kind, upscale_size
from api.presets import apply_style, style_presets
from api.uploads import decode_base64, open_image
from api.webhook_targets import webhook_target
from latentq.contract import (
    MAX_SEED,
    GenerateRequest,
    JobSpec,
    LoraChoice,
    LoraWeight,
    OutputFormat,
    UpscaleRequest,
    WebhookFields,
    WebhookTarget,
    WeightedPrompt,
)
from latentq.errors import LatentqError
from latentq.keys import input_object_key, job_folder
from latentq.models import ModelRegistry, ModelSpec, size_problem
from latentq.settings import ApiSettings


@dataclass(frozen=True)
class JobDraft:
    """A validated job, not yet stored or queued."""

    spec: JobSpec
    #: Input images to store before the job is queued, by object key (the spec names the keys).
    uploads: dict[str, Image] = field(default_factory=dict)
    #: Whether the job takes its API key's default webhook, if the key has one (it names none itself).
    takes_default_webhook: bool = False


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


def resolve_loras(
    registry: ModelRegistry, model: ModelSpec, choices: list[LoraChoice] | None
) -> list[LoraWeight]:
    """Return the adapters ``choices`` name with their final weights; raise ``invalid_lora`` for one
    that is unknown, made for another model, or named twice."""
    fitting = sorted(lora.id for lora in registry.loras.values() if lora.fits(model.id, model.family))
    valid = f"adapters for model '{model.id}': {', '.join(fitting) or 'none'}"
    resolved: list[LoraWeight] = []
    for index, choice in enumerate(choices or ()):
        lora = registry.loras.get(choice.id)
        if lora is None or not lora.fits(model.id, model.family):
            made_for = (
                "unknown adapter" if lora is None else f"made for {', '.join(lora.models) or lora.family}"
            )
            raise LatentqError.for_field(
                "invalid_lora", f"loras.{index}.id", f"loras.{index}.id: '{choice.id}' ({made_for}); {valid}"
            )
        if any(taken.id == lora.id for taken in resolved):
            raise LatentqError.for_field(
                "invalid_lora", f"loras.{index}.id", f"loras.{index}.id: adapter '{lora.id}' is named twice"
            )
        weight = choice.weight if choice.weight is not None else lora.default_weight
        resolved.append(LoraWeight(id=lora.id, weight=weight))
    return resolved


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


def check_sampler(model: ModelSpec, sampler: str) -> None:
    """Raise ``invalid_sampler`` unless ``model``'s family can run ``sampler``."""
    if sampler not in model.samplers:
        valid = ", ".join(model.samplers)
        raise LatentqError.for_field(
            "invalid_sampler", "sampler",
            f"sampler: model '{model.id}' ({model.family} family) cannot run {sampler}; it runs: {valid}",
        )  # fmt: skip


def check_negative_prompts(model: ModelSpec, request: GenerateRequest, prompts: list[WeightedPrompt]) -> None:
    """Raise ``invalid_negative_prompt`` (or ``invalid_text_prompts`` for a negative weight) if
    ``model``'s family has no negative prompt (FLUX: guidance is an embedding, not a second pass)."""
    if model.takes_negative_prompt or all(p.weight >= 0 for p in prompts):
        return
    field = "negative_prompt" if request.negative_prompt is not None else "text_prompts"
    what = "a negative prompt" if field == "negative_prompt" else "prompts of negative weight"
    raise LatentqError.for_field(
        f"invalid_{field}", field,
        f"{field}: model '{model.id}' ({model.family} family) takes no negative prompt; leave out {what}",
    )  # fmt: skip


def build_spec(
    job_id: str, folder: str, request: GenerateRequest, model: ModelSpec, inputs: Inputs,
    webhook: WebhookTarget | None, control: dict[str, Any] | None = None,
) -> JobSpec:  # fmt: skip
    """Resolve ``request`` for ``model``: fill defaults, check sizes, apply the style, pick a seed.

    ``inputs`` are its decoded images (image-to-image, masking, control): they set the output size,
    and the spec names the object keys they are stored under, in the job's S3 ``folder``.
    ``control`` are its ControlNet's spec fields (``api.control_inputs.control_settings``).
    """
    defaults = model.defaults
    if inputs.size:
        width, height = inputs.size
    else:
        width = request.width if request.width is not None else defaults.width
        height = request.height if request.height is not None else defaults.height
        check_size(model, width, height)
    prompts = request_prompts(request)
    check_negative_prompts(model, request, prompts)
    if request.style_preset is not None:
        if request.style_preset not in style_presets():
            valid = ", ".join(sorted(style_presets()))
            raise LatentqError.for_field(
                "invalid_style_preset",
                "style_preset",
                f"style_preset: unknown preset '{request.style_preset}'; valid presets: {valid}",
            )
        prompts = apply_style(request.style_preset, prompts)
        if not model.takes_negative_prompt:  # a style's negative text is advice the model cannot take
            prompts = [p for p in prompts if p.weight > 0]
    sampler = request.sampler or defaults.sampler
    check_sampler(model, sampler)
    return JobSpec(
        job_id=job_id,
        model=model.id,
        prompts=prompts,
        width=width,
        height=height,
        steps=request.steps if request.steps is not None else defaults.steps,
        cfg_scale=request.cfg_scale if request.cfg_scale is not None else defaults.cfg_scale,
        samples=request.samples,
        seed=request.seed or secrets.randbelow(MAX_SEED) + 1,
        sampler=sampler,
        style_preset=request.style_preset,
        output_format=request.output_format,
        preview=request.preview,
        retention_s=request.retention_s,
        task=inputs.kind,
        strength=inputs.strength,
        schedule_end=inputs.schedule_end,
        webhook=webhook,
        folder=folder,
        **input_keys(folder, inputs),
        **(control or {}),
    )


def build_upscale_spec(
    job_id: str, folder: str, model: ModelSpec, size: tuple[int, int], output_format: OutputFormat,
    webhook: WebhookTarget | None,
) -> JobSpec:  # fmt: skip
    """Return the spec of an upscale to ``size`` on ``model``; its input image is stored as ``init``."""
    defaults = model.defaults
    return JobSpec(
        job_id=job_id, model=model.id, prompts=[WeightedPrompt(text="", weight=1.0)],
        width=size[0], height=size[1], steps=defaults.steps, cfg_scale=defaults.cfg_scale, samples=1,
        seed=secrets.randbelow(MAX_SEED) + 1, sampler=defaults.sampler, output_format=output_format,
        task="upscale", webhook=webhook, folder=folder, init_image_key=input_object_key(folder, "init"),
    )  # fmt: skip


def input_keys(folder: str, inputs: Inputs) -> dict[str, str]:
    """Return the spec fields naming the object key of each of ``inputs`` (``init_image_key``, ...)."""
    return {f"{name}_image_key": input_object_key(folder, name) for name in inputs.images}


def check_retention(request: GenerateRequest, max_retention_s: int) -> None:
    """Raise ``invalid_retention_s`` if the request asks to be kept longer than ``max_retention_s``."""
    if request.retention_s is not None and request.retention_s > max_retention_s:
        raise LatentqError.for_field(
            "invalid_retention_s", "retention_s",
            f"retention_s: at most {max_retention_s} seconds (got {request.retention_s})",
        )  # fmt: skip


def request_webhook(
    request: WebhookFields, settings: ApiSettings, default: WebhookTarget | None, webhooks: bool
) -> tuple[WebhookTarget | None, bool]:
    """Return the job's webhook as far as it is known at the door, and whether it takes its key's
    default (known only when queued). ``default`` is the key's default, read only when the request
    gives events without a URL; without ``webhooks`` the job has none (the Stability routes)."""
    if not webhooks:
        return None, False
    if request.webhook_url is None and request.webhook_events is None:
        return None, True
    target = webhook_target(
        request.webhook_url, request.webhook_events, default, settings.webhook_allowed_hosts
    )
    return target, False


def validate_request(
    request: GenerateRequest | UpscaleRequest,
    registry: ModelRegistry,
    settings: ApiSettings,
    account: str,
    default_webhook: WebhookTarget | None = None,
    webhooks: bool = True,
    request_id: str | None = None,
) -> JobDraft:
    """The pure validation step: return the draft of a generation (text-to-image, image-to-image,
    masking) or upscale request of ``account`` (its public id: the job's objects are stored under
    it), made by the HTTP request ``request_id``, or raise the named error of the first rule it
    breaks."""
    webhook, takes_default = request_webhook(request, settings, default_webhook, webhooks)
    job_id = str(uuid.uuid4())
    folder = job_folder(account, job_id)
    if isinstance(request, UpscaleRequest):
        spec, inputs = upscale_spec(job_id, folder, request, registry, webhook)
    else:
        spec, inputs = generation_spec(job_id, folder, request, registry, settings, webhook)
    spec.request_id = request_id  # the spec was made just above: no one else holds it yet
    uploads = {input_object_key(folder, name): image for name, image in inputs.images.items()}
    return JobDraft(spec, uploads, takes_default)


def generation_spec(
    job_id: str,
    folder: str,
    request: GenerateRequest,
    registry: ModelRegistry,
    settings: ApiSettings,
    webhook: WebhookTarget | None,
) -> tuple[JobSpec, Inputs]:
    """Return the spec of a generation request and its decoded input images."""
    check_retention(request, settings.max_job_retention_s)
    kind = request_kind(request)
    model = resolve_model(registry, request.model)
    check_kind(model, kind, registry)
    loras = resolve_loras(registry, model, request.loras)
    inputs = read_inputs(request, model, kind)
    control = control_settings(request, model, registry)
    if control:
        inputs.images["control"] = read_control_image(request, model, inputs.images.get("init"))
    spec = build_spec(job_id, folder, request, model, inputs, webhook, control)
    spec.loras = loras  # the spec was made just above: no one else holds it yet
    return spec, inputs


def upscale_spec(
    job_id: str, folder: str, request: UpscaleRequest, registry: ModelRegistry, webhook: WebhookTarget | None
) -> tuple[JobSpec, Inputs]:
    """Return the spec of an upscale request and its decoded image."""
    if request.model is None:
        upscalers = [model for model in registry.models.values() if "upscale" in model.tasks]
        if not upscalers:
            raise LatentqError.for_field("invalid_model", "model", "model: no upscale model is registered")
        model = upscalers[0]
    else:
        model = resolve_model(registry, request.model)
        check_kind(model, "upscale", registry)
    image = open_image(decode_base64(request.image, "image"), "image", model.limits.max_pixels).convert("RGB")
    size = upscale_size(image, request.width, request.height, model)
    spec = build_upscale_spec(job_id, folder, model, size, request.output_format, webhook)
    return spec, Inputs({"init": image})


def carries_images(request: GenerateRequest | UpscaleRequest) -> bool:
    """Whether validating ``request`` decodes images (CPU work, run off the event loop)."""
    return (
        isinstance(request, UpscaleRequest)
        or request.init_image is not None
        or (request.control_image is not None)
    )
