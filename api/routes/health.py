"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from rq import Queue, Worker

from api.deps import ImageStoreDep, RedisDep, SettingsDep
from latentq.keys import queue_name

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer 200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is not ready"}})
def readyz(settings: SettingsDep, redis: RedisDep, store: ImageStoreDep) -> JSONResponse:
    """Answer 200 when Redis and S3 are reachable and a worker serves the model; else 503 with reasons."""
    checks: dict[str, str] = {}
    try:
        redis.ping()
        queue = Queue(queue_name(settings.model_id), connection=redis)
        workers = Worker.count(connection=redis, queue=queue)
        checks["redis"] = "ok"
        checks["workers"] = f"{workers} live" if workers else "no live worker for this model"
    except Exception as error:  # noqa: BLE001 - any failure is "not ready", with its reason
        checks["redis"] = f"unreachable: {type(error).__name__}"
        workers = 0
    try:
        store.check()
        checks["s3"] = "ok"
    except Exception as error:  # noqa: BLE001
        checks["s3"] = f"unreachable: {type(error).__name__}: {error}"
    ready = checks["redis"] == "ok" and checks["s3"] == "ok" and workers > 0
    return JSONResponse(
        {"status": "ready" if ready else "not_ready", "checks": checks}, 200 if ready else 503
    )
