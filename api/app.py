"""The FastAPI application: routes, and one envelope for every error."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse
from redis.exceptions import RedisError
from starlette.exceptions import HTTPException

import latentq
from api.body_parsing import validation_error
from api.error_envelope import error_response
from api.metrics import install_metrics, metrics_port
from api.openapi_doc import describe
from api.request_guard import RequestGuard, SecurityHeaders
from api.request_ids import REQUEST_ID_HEADER, RequestIds
from api.routes import (
    admin,
    events,
    health,
    jobs,
    models,
    openai_images,
    stability,
    stability_v2,
    webhook_settings,
)
from api.routes.pages import add_pages
from api.services import Services
from latentq.accounts import MIN_BOOTSTRAP_KEY_LENGTH
from latentq.durability import durability_problems, replication_problem
from latentq.errors import LatentqError
from latentq.logs import configure_logging
from latentq.settings import ApiSettings, get_api_settings, get_registry

log = logging.getLogger("latentq.api")

_HTTP_NAMES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


async def _on_latentq_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, LatentqError)
    return error_response(error)


async def _on_validation_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, RequestValidationError)
    return error_response(validation_error(error.errors()))


async def _on_http_error(_: Request, error: Exception) -> JSONResponse:
    assert isinstance(error, HTTPException)
    name = _HTTP_NAMES.get(
        error.status_code, "invalid_request" if error.status_code < 500 else "internal_error"
    )
    response = error_response(LatentqError(name, str(error.detail)))
    response.headers.update(error.headers or {})  # a 405's Allow, for one
    return response


async def _on_redis_error(_: Request, error: Exception) -> JSONResponse:
    log.error("redis unavailable: %s", error)
    return error_response(LatentqError("service_unavailable", "The job store (Redis) is unreachable."))


async def _on_unexpected_error(request: Request, error: Exception) -> JSONResponse:
    log.exception("unhandled error", exc_info=error)
    response = error_response(LatentqError("internal_error"))
    # Answered outside every middleware (Starlette's ServerErrorMiddleware): the id is added here.
    request_id = request.scope.get("state", {}).get("request_id")
    if request_id:
        response.headers[REQUEST_ID_HEADER] = request_id
    return response


def check_bootstrap_keys(settings: ApiSettings) -> None:
    """Refuse to start without a bootstrap key in development (nothing could call), and with one
    shorter than ``MIN_BOOTSTRAP_KEY_LENGTH`` in production (a guessable key with every scope)."""
    if settings.env == "production":
        short = [key for key in settings.api_keys if len(key) < MIN_BOOTSTRAP_KEY_LENGTH]
        if short:
            raise RuntimeError(
                f"LATENTQ_ENV=production: {len(short)} of LATENTQ_API_KEYS are shorter than "
                f"{MIN_BOOTSTRAP_KEY_LENGTH} characters; use long random keys, or managed keys only"
            )
    elif not settings.api_keys:
        raise RuntimeError("LATENTQ_API_KEYS is empty: set at least one API key (comma-separated)")


def check_redis_durability(services: Services) -> None:
    """Refuse to start in production on a Redis that can lose what it stores (``latentq.durability``);
    in development, or where it cannot be checked, say so in the log."""
    try:
        problems = durability_problems(services.redis)
        lagging = replication_problem(services.redis, services.settings.replicas_to_wait_for)
    except RedisError as error:  # it answers 503 until Redis is back; checked at the next start
        log.warning("Redis durability not checked (unreachable at start-up: %s)", type(error).__name__)
        return
    if problems is None:
        log.warning("Redis durability not checked: this Redis refuses CONFIG GET; make sure it runs "
                    "with appendonly yes and maxmemory-policy noeviction")  # fmt: skip
    elif problems and services.settings.env == "production":
        raise RuntimeError(f"LATENTQ_ENV=production: Redis can lose jobs and balances: {'; '.join(problems)}")
    elif problems:
        log.warning("Redis can lose jobs and balances: %s (refused in production)", "; ".join(problems))
    if lagging:
        log.warning("%s: they are answered 503 until it has", lagging)


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Return the latentq API application, with ``settings`` or those of the environment; with the
    environment's (``uvicorn --factory``: this is the API process) it configures the process's logs."""
    if settings is None:
        settings = get_api_settings()
        configure_logging("api", settings)
    check_bootstrap_keys(settings)
    get_registry(settings)  # a broken registry stops start-up, not the first request

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Made per app (and so per event loop): asyncio clients must not cross loops.
        app.state.services = services = Services.create(settings)
        check_redis_durability(services)
        # Everything made so far lives as long as the process: keep it out of the collector's
        # scans, whose full collections over the start-up heap stalled requests (docs/BENCHMARKS.md).
        gc.collect()
        gc.freeze()
        try:
            with metrics_port(settings, app):  # a second port for /metrics, if set
                yield
        finally:
            await services.async_redis.aclose()
            await services.wait_redis.aclose()

    app = FastAPI(
        lifespan=lifespan,
        title="latentq",
        version=latentq.__version__,
        summary="Self-hostable Stable Diffusion image generation over a job queue.",
        docs_url=None,  # served by api.routes.pages from local assets, as is /redoc
        redoc_url=None,
    )
    app.include_router(health.router)
    app.include_router(jobs.router)
    app.include_router(events.router)
    app.include_router(models.router)
    app.include_router(stability.router)
    app.include_router(stability_v2.router)
    app.include_router(openai_images.router)
    app.include_router(webhook_settings.router)
    app.include_router(admin.router)
    add_pages(app)  # the playground at /, /docs and /redoc: keyless pages
    app.add_exception_handler(LatentqError, _on_latentq_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(HTTPException, _on_http_error)
    app.add_exception_handler(RedisError, _on_redis_error)
    app.add_exception_handler(Exception, _on_unexpected_error)
    app.openapi = lambda: describe(app)  # type: ignore[method-assign]
    app.add_middleware(RequestGuard)  # the key and the body's size, before the body is read
    if settings.cors_origins:  # outside the guard: a preflight carries no key
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
            allow_headers=[
                "Authorization",
                "Content-Type",
                "Idempotency-Key",
                "Prefer",
                "Last-Event-ID",
                REQUEST_ID_HEADER,
            ],
            expose_headers=[
                REQUEST_ID_HEADER,
                "Location",
                "Retry-After",
                "RateLimit-Limit",
                "RateLimit-Remaining",
                "RateLimit-Reset",
            ],
            max_age=600,
        )
    app.add_middleware(SecurityHeaders)
    install_metrics(app, settings)  # /metrics, and the HTTP metrics middleware: outside all but the ids
    app.add_middleware(RequestIds)  # last: outermost, so every answer carries X-Request-Id
    return app
