"""Liveness and readiness: ``GET /healthz`` and ``GET /readyz``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool

from api.deps import ServicesDep, authenticate, presented_key
from api.services import Services
from latentq.errors import LatentqError
from latentq.keys import queue_name
from latentq.leases import live_workers

router = APIRouter(tags=["health"])


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Answer 200 while the process serves requests."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "A dependency is not ready"}})
async def readyz(request: Request, services: ServicesDep) -> JSONResponse:
    """Answer 200 when Redis and S3 are reachable and a worker serves the default model; else 503
    (with ``Retry-After``).

    ``checks`` says which dependency is not ready (``redis``, ``s3``: ``ok`` or ``unreachable``;
    ``workers``: ``ok`` or ``none`` for the default model), without names of internal hosts.
    With a key of the ``admin`` scope, ``details`` adds why each is unreachable (the exception's
    type) and the live workers of every registered model: those whose heartbeat is fresher than
    ``LATENTQ_WORKER_LOST_S``.
    """
    checks, details, ready = await run_in_threadpool(_readiness, services)
    body: dict[str, Any] = {"status": "ready" if ready else "not_ready", "checks": checks}
    if await _is_admin(request):
        body["details"] = details
    return JSONResponse(body, 200 if ready else 503, headers=None if ready else {"Retry-After": "5"})


def _readiness(services: Services) -> tuple[dict[str, str], dict[str, Any], bool]:
    """Check Redis, S3 and the workers; return the public checks, the admin's details and whether
    the service is ready."""
    registry, redis, store = services.registry, services.redis, services.store
    checks: dict[str, str] = {}
    details: dict[str, Any] = {}
    workers: dict[str, int] = {}
    try:
        redis.ping()
        for model_id in registry.ids():
            workers[model_id] = live_workers(redis, queue_name(model_id))
        checks["redis"] = details["redis"] = "ok"
    except Exception as error:  # noqa: BLE001 - any failure is "not ready", with its reason
        checks["redis"], details["redis"] = "unreachable", f"unreachable: {type(error).__name__}"
    try:
        store.check()
        checks["s3"] = details["s3"] = "ok"
    except Exception as error:  # noqa: BLE001
        checks["s3"], details["s3"] = "unreachable", f"unreachable: {type(error).__name__}"
    checks["workers"] = "ok" if workers.get(registry.default_id, 0) > 0 else "none"
    details["workers"] = {model: f"{count} live" if count else "none" for model, count in workers.items()}
    ready = checks["redis"] == "ok" and checks["s3"] == "ok" and checks["workers"] == "ok"
    return checks, details, ready


async def _is_admin(request: Request) -> bool:
    """Whether the request carries a valid key of the ``admin`` scope (none is needed)."""
    if "authorization" not in request.headers:
        return False
    try:
        principal = await authenticate(request, presented_key(request.headers))
    except (LatentqError, RedisError):
        return False
    return "admin" in principal.scopes
