"""The API's Prometheus metrics: HTTP requests by route template and status, their latency, jobs
submitted, rate-limit refusals, and the queue gauges read from Redis at each scrape
(``latentq.metrics.QueueStats``); served at ``GET /metrics`` (no key, not in the OpenAPI
description) and, with ``LATENTQ_METRICS_PORT``, on that port too.

Counting costs no Redis call: a request adds to two in-process series (``HttpMetrics``, a pure
ASGI middleware), a submit to one more. Each API process counts its own requests; Prometheus sums
the processes (one uvicorn process per replica keeps every process scraped).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentq.metrics import HTTP_BUCKETS, QueueStats, new_registry
from latentq.probes import METRICS_CONTENT_TYPE, ProbeServer
from latentq.settings import CommonSettings, get_registry

log = logging.getLogger("latentq.api")

#: The API process's metrics (the queue gauges are collected per app: ``render``).
REGISTRY = new_registry()

HTTP_REQUESTS = Counter(
    "latentq_http_requests",
    "HTTP requests answered, by method, route template and status.",
    ["method", "route", "status"],
    registry=REGISTRY,
)
HTTP_DURATION = Histogram(
    "latentq_http_request_duration_seconds",
    "Seconds from a request's arrival to the end of its answer, by method and route template.",
    ["method", "route"],
    buckets=HTTP_BUCKETS,
    registry=REGISTRY,
)
JOBS_SUBMITTED = Counter(
    "latentq_jobs_submitted",
    "Jobs queued (idempotent replays not counted), by model and task.",
    ["model", "task"],
    registry=REGISTRY,
)
RATE_LIMITED = Counter(
    "latentq_rate_limited",
    "Requests refused 429 rate_limited (a key over its request rate).",
    registry=REGISTRY,
)

#: The methods counted by name; any other is counted as ``other``.
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: The route label of a request that matched no route.
UNMATCHED = "unmatched"


def route_template(route: BaseRoute) -> str:
    """Return the template of ``route`` (``/v1/jobs/{job_id}``; a mount's ``/playground/{path}``)."""
    return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED


def route_label(scope: Scope) -> str:
    """Return the route label of the request of ``scope``, after it was answered: the template of the
    route that handled it; for one refused before routing (no key, too large, over its rate), the
    route it would have gone to; ``unmatched`` for none."""
    route = scope.get("route")
    if route is not None:
        return route_template(route)
    partial = None
    for candidate in scope["app"].router.routes:  # refusals only: rare, so a scan is cheap enough
        match, _ = candidate.matches(scope)
        if match is Match.FULL:
            return route_template(candidate)
        if match is Match.PARTIAL and partial is None:
            partial = candidate
    return route_template(partial) if partial is not None else UNMATCHED


class HttpMetrics:
    """Counts each HTTP request by method, route template and status, and times it to the end of its
    answer (a long event stream included). An exception that escapes counts as a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, noting_status)
        finally:
            method = scope["method"] if scope["method"] in METHODS else "other"
            counted, timed = self._series(method, route_label(scope), status)
            counted.inc()
            timed.observe(time.perf_counter() - started)

    def _series(self, method: str, route: str, status: int) -> tuple[Counter, Histogram]:
        """The request counter and the latency histogram of these labels, looked up once (their
        combinations are bounded: methods, route templates and statuses)."""
        key = (method, route, status)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = (
                HTTP_REQUESTS.labels(method, route, str(status)),
                HTTP_DURATION.labels(method, route),
            )
        return series


def install_metrics(app: FastAPI, settings: CommonSettings) -> None:
    """Serve ``GET /metrics`` on ``app`` and count its requests (``HttpMetrics``, outermost: call it
    after adding the other middlewares); nothing with ``LATENTQ_METRICS`` off."""
    if not settings.metrics:
        return
    app.state.metric_collectors = collectors = CollectorRegistry(auto_describe=False)
    collectors.register(QueueStats.for_settings(settings, get_registry(settings).ids()))
    app.include_router(router)
    app.add_middleware(HttpMetrics)


def render(collectors: CollectorRegistry) -> bytes:
    """Return the text of every metric of the API process and of ``collectors`` (an app's own)."""
    return generate_latest(REGISTRY) + generate_latest(collectors)


@contextmanager
def metrics_port(settings: CommonSettings, app: FastAPI) -> Iterator[None]:
    """Serve ``app``'s ``/metrics`` on ``LATENTQ_METRICS_PORT`` too, if set, for the ``with`` block. A
    port another process of this API holds (several uvicorn processes) is said in the log and skipped."""
    collectors = getattr(app.state, "metric_collectors", None)
    if settings.metrics_port is None or collectors is None:
        yield
        return
    try:
        listener = ProbeServer(settings.metrics_host, settings.metrics_port, lambda: render(collectors))
    except OSError as error:
        log.warning("metrics not served on port %d (%s); still on /metrics", settings.metrics_port, error)
        yield
        return
    listener.start()
    try:
        yield
    finally:
        listener.stop()


router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> Response:
    """The Prometheus text of this API process (its queue gauges read from Redis in a thread)."""
    body = await run_in_threadpool(render, request.app.state.metric_collectors)
    return Response(body, media_type=METRICS_CONTENT_TYPE)
