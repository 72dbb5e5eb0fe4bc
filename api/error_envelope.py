"""How every error is answered: ``{"error": {"name", "message", ...}}`` with its status, or on
Stability's routes (``/v1/generation/...``) in Stability's shape."""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse

from latentq.errors import RETRY_AFTER_S, LatentqError, stability_name

#: Where Stability's routes (and their error shape) live.
STABILITY_PREFIX = "/v1/generation/"


def error_response(error: LatentqError) -> JSONResponse:
    """Render ``error`` as ``{"error": {"name", "message", ...}}`` with its status."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if error.name in RETRY_AFTER_S:
        headers["Retry-After"] = str(RETRY_AFTER_S[error.name])
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=headers)


def stability_error(error: LatentqError) -> JSONResponse:
    """Render ``error`` in Stability's shape, with our status."""
    body = {"id": uuid.uuid4().hex, "name": stability_name(error.name), "message": error.message}
    retry = {"Retry-After": str(RETRY_AFTER_S[error.name])} if error.name in RETRY_AFTER_S else None
    return JSONResponse(body, status_code=error.status, headers=retry)


def error_response_for(path: str, error: LatentqError) -> JSONResponse:
    """Render ``error`` in the shape the route at ``path`` answers with."""
    return stability_error(error) if path.startswith(STABILITY_PREFIX) else error_response(error)
