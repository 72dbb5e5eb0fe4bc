"""What can be asked for: ``GET /v1/models`` (the model registry), ``GET /v1/loras`` (its LoRA
adapters), ``GET /v1/controlnets`` and ``GET /v1/styles``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from rq import Queue, Worker

from api.deps import Caller, CallerDep
from api.presets import style_presets
from latentq.errors import LatentqError
from latentq.keys import queue_name
from latentq.loras import LoraSpec
from latentq.models import ModelRegistry, ModelSpec

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(caller: CallerDep) -> dict[str, Any]:
    """List registered models with their limits, defaults and live worker count.

    The envelope (``object: list``, ``data``) is OpenAI's, so OpenAI clients can list models too.
    """
    registry = caller.services.registry
    return {"object": "list", "data": [model_view(caller, model) for model in registry.models.values()]}


@router.get("/models/{model_id}", responses={401: {"description": "Missing or invalid API key"},
                                             404: {"description": "No such model"}})  # fmt: skip
def get_model(model_id: str, caller: CallerDep) -> dict[str, Any]:
    """Return one registered model, as ``GET /v1/models`` lists it (OpenAI's ``models.retrieve``)."""
    model = caller.services.registry.get(model_id)
    if model is None:
        raise LatentqError("not_found", f"No model {model_id!r} is registered.")
    return model_view(caller, model)


def model_view(caller: Caller, model: ModelSpec) -> dict[str, Any]:
    """Return ``model`` as the models routes show it, with its live worker count."""
    registry, redis = caller.services.registry, caller.services.redis
    workers = Worker.count(connection=redis, queue=Queue(queue_name(model.id), connection=redis))
    return {
        "id": model.id,
        "object": "model",
        "owned_by": "latentq",
        "name": model.name,
        "description": model.description,
        "family": model.family,
        "tasks": list(model.tasks),
        "default": model.id == registry.default_id,
        "limits": model.limits.model_dump(),
        "defaults": model.defaults.model_dump(),
        "samplers": list(model.samplers),
        # FLUX has none (a negative prompt there is refused: invalid_negative_prompt).
        "takes_negative_prompt": model.takes_negative_prompt,
        "safety": registry.safety_of(model)[0],
        "workers": workers,
    }


@router.get("/loras")
def list_loras(caller: CallerDep) -> dict[str, Any]:
    """List registered LoRA adapters: their family, the models they fit, default weight and trigger words."""
    registry = caller.services.registry
    return {"object": "list", "data": [lora_view(registry, lora) for lora in registry.loras.values()]}


def lora_view(registry: ModelRegistry, lora: LoraSpec) -> dict[str, Any]:
    """Return ``lora`` as ``GET /v1/loras`` lists it (its source stays private to the operator)."""
    models = [model.id for model in registry.models.values() if lora.fits(model.id, model.family)]
    return {
        "id": lora.id,
        "object": "lora",
        "name": lora.name or lora.id,
        "description": lora.description,
        "family": lora.family,
        "models": models,
        "default_weight": lora.default_weight,
        "trigger_words": list(lora.trigger_words),
    }


@router.get("/styles")
def list_styles(_caller: CallerDep) -> dict[str, Any]:
    """List the style presets a request may name, with their prompt templates."""
    return {"data": [{"name": name, **preset} for name, preset in sorted(style_presets().items())]}


@router.get("/controlnets")
def list_controlnets(caller: CallerDep) -> dict[str, Any]:
    """List the registered ControlNets (``control_model``) and the models each can condition."""
    registry = caller.services.registry
    return {
        "object": "list",
        "data": [
            {
                **controlnet.model_dump(exclude={"source"}),
                "object": "controlnet",
                "models": [m.id for m in registry.models.values() if m.family == controlnet.family],
            }
            for controlnet in registry.controlnets.values()
        ],
    }
