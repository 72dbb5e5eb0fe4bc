"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from api.deps import ServicesDep
from latentq.keys import queue_name
from latentq.leases import live_workers

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer 200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is not ready"}})
def readyz(services: ServicesDep) -> JSONResponse:
    """Answer 200 when Redis and S3 are reachable and a worker serves the default model; else 503.

    ``checks.workers`` counts live workers per registered model: those whose heartbeat is fresher
    than ``LATENTQ_WORKER_LOST_S``.
    """
    registry, redis, store = services.registry, services.redis, services.store
    checks: dict[str, Any] = {}
    workers: dict[str, int] = {}
    try:
        redis.ping()
        for model_id in registry.ids():
            workers[model_id] = live_workers(redis, queue_name(model_id))
        checks["redis"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure is "not ready", with its reason
        checks["redis"] = f"unreachable: {type(error).__name__}"
    checks["workers"] = {model: f"{count} live" if count else "none" for model, count in workers.items()}
    try:
        store.check()
        checks["s3"] = "ok"
    except Exception as error:  # noqa: BLE001
        checks["s3"] = f"unreachable: {type(error).__name__}"  # no endpoint or bucket names
    ready = checks["redis"] == "ok" and checks["s3"] == "ok" and workers.get(registry.default_id, 0) > 0
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )
