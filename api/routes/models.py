"""What can be asked for: ``GET /v1/models`` (the model registry) and ``GET /v1/styles``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from rq import Queue, Worker

from api.deps import CallerDep
from api.presets import style_presets
from latentq.contract import SAMPLERS
from latentq.keys import queue_name

router = APIRouter(prefix="/v1", tags=["models"])


@router.get("/models")
def list_models(caller: CallerDep) -> dict[str, Any]:
    """List registered models with their limits, defaults and live worker count.

    The envelope (``object: list``, ``data``) is OpenAI's, so OpenAI clients can list models too.
    """
    registry, redis = caller.services.registry, caller.services.redis
    data = []
    for model in registry.models.values():
        workers = Worker.count(connection=redis, queue=Queue(queue_name(model.id), connection=redis))
        data.append(
            {
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
                "samplers": list(SAMPLERS),
                "workers": workers,
            }
        )
    return {"object": "list", "data": data}


@router.get("/styles")
def list_styles(_caller: CallerDep) -> dict[str, Any]:
    """List the style presets a request may name, with their prompt templates."""
    return {"data": [{"name": name, **preset} for name, preset in sorted(style_presets().items())]}
