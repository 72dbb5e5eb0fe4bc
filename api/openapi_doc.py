"""The OpenAPI description as the routes really behave, not as FastAPI guesses it.

FastAPI documents a ``422`` on every route with parameters, which this API never answers (a bad
field is a named ``400``), and knows nothing of the bearer key or of the headers the routes read
themselves. ``describe`` takes FastAPI's document and fixes that: the bearer security scheme on
every ``/v1`` route (so ``/docs`` has an Authorize button), the error envelope on every error
answer, ``401`` everywhere a key is needed, ``413`` where a body is read, and the headers
``Idempotency-Key``, ``Prefer`` and ``Last-Event-ID``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from api.routes import openai_images as openai_routes
from api.routes import stability as stability_routes
from api.routes import stability_v2 as stability_v2_routes

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["name", "message"],
            "properties": {
                "name": {"type": "string", "description": "Machine-readable name (README, Errors)"},
                "message": {"type": "string"},
                "field": {"type": "string", "description": "The request field at fault, if one is"},
                "errors": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
STABILITY_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "message", "status"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "message": {"type": "string"},
        "status": {"type": "integer"},
    },
}
STABILITY_V2_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["id", "name", "errors"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "string"}},
    },
}
OPENAI_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type", "param", "code"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string", "description": "invalid_request_error, authentication_error, ..."},
                "param": {"type": ["string", "null"], "description": "The body field at fault, if one is"},
                "code": {
                    "type": "string",
                    "description": "Our error's machine-readable name (README, Errors)",
                },
            },
        }
    },
}
_HEADERS = {
    "idempotency": {
        "name": "Idempotency-Key", "in": "header", "required": False,
        "schema": {"type": "string", "maxLength": 255},
        "description": "Repeat a submit safely: the same key and body answer the original job.",
    },
    "prefer": {
        "name": "Prefer", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "wait=N: answer when the job ends, or after N seconds (at most 60) with it as it is.",
    },
    "last_event": {
        "name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"},
        "description": "Resume the stream after this event id.",
    },
}  # fmt: skip
#: Which routes read which of ``_HEADERS``: (method, path) -> names.
_ROUTE_HEADERS = {
    ("post", "/v1/generate"): ("idempotency", "prefer"),
    ("post", "/v1/upscale"): ("idempotency", "prefer"),
    ("get", "/v1/jobs/{job_id}/events"): ("last_event",),
}
_STANDARD = {
    "400": "A field breaks its rule, or the body is malformed (a named error)",
    "401": "Missing or invalid API key",
    "403": "The API key lacks the scope this route needs",
    "404": "No such job, engine, account or key",
    "413": "The request body is over its limit",
    "429": "Over the key's request rate (Retry-After says when to retry)",
    "503": "A backing service is unreachable, or the queue is full (Retry-After)",
}


def describe(app: FastAPI) -> dict[str, Any]:
    """Return (and keep) the app's OpenAPI document, fixed as the module says."""
    if app.openapi_schema:
        return app.openapi_schema
    document = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    components = document.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    schemas = components.setdefault("schemas", {})
    schemas["Error"], schemas["StabilityError"] = ERROR_SCHEMA, STABILITY_ERROR_SCHEMA
    schemas["OpenAIError"], schemas["StabilityV2Error"] = OPENAI_ERROR_SCHEMA, STABILITY_V2_ERROR_SCHEMA
    shapes = {getattr(route, "path", ""): shape for router, shape in
              ((stability_routes.router, "StabilityError"), (openai_routes.router, "OpenAIError"),
               (stability_v2_routes.router, "StabilityV2Error"))
              for route in router.routes}  # fmt: skip
    for path, operations in document["paths"].items():
        for method, operation in operations.items():
            _fix(path, method, operation, shapes.get(path, "Error"))
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    app.openapi_schema = document
    return document


def _fix(path: str, method: str, operation: dict[str, Any], error_schema: str) -> None:
    responses: dict[str, Any] = operation.setdefault("responses", {})
    for name in _ROUTE_HEADERS.get((method, path), ()):
        operation.setdefault("parameters", []).append(_HEADERS[name])
    responses.pop("422", None)  # never answered: a bad field is a named 400 ...
    reads = "requestBody" in operation or any(p["in"] != "path" for p in operation.get("parameters", []))
    if reads:  # ... which only a route reading a body, a query or a header can answer
        responses.setdefault("400", {"description": _STANDARD["400"]})
    if not path.startswith(("/v1/", "/v2beta/")):
        return  # /healthz and /readyz: no key, and their own answers
    operation["security"] = [{"bearer": []}]
    for status in ("401", "403", "429", "503"):  # any keyed route: its key, scope, rate, Redis
        responses.setdefault(status, {"description": _STANDARD[status]})
    if "{" in path:  # an id in the path: it may name nothing (or another account's)
        responses.setdefault("404", {"description": _STANDARD["404"]})
    if "requestBody" in operation:
        responses.setdefault("413", {"description": _STANDARD["413"]})
    for status, response in responses.items():
        if status[0] in "45":
            reference = {"$ref": f"#/components/schemas/{error_schema}"}
            response["content"] = {"application/json": {"schema": reference}}
