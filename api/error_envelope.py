"""How every error is answered: ``{"error": {"name", "message", ...}}`` with its status, or on
Stability's routes (``/v1/generation/``, ``/v1/engines/``, ``/v1/user/``) in Stability's shape."""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse

from latentq.errors import LatentqError, retry_after, stability_name

#: Where Stability's routes (and their error shape) live.
STABILITY_PREFIXES = ("/v1/generation/", "/v1/engines/", "/v1/user/")


def error_response(error: LatentqError) -> JSONResponse:
    """Render ``error`` as ``{"error": {"name", "message", ...}}`` with its status."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if (seconds := retry_after(error)) is not None:
        headers["Retry-After"] = seconds
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=headers)


def stability_error(error: LatentqError) -> JSONResponse:
    """Render ``error`` in Stability's shape, with our status."""
    body = {"id": uuid.uuid4().hex, "name": stability_name(error.name), "message": error.message,
            "status": error.status}  # fmt: skip
    seconds = retry_after(error)
    retry = {"Retry-After": seconds} if seconds is not None else None
    return JSONResponse(body, status_code=error.status, headers=retry)


def error_response_for(path: str, error: LatentqError) -> JSONResponse:
    """Render ``error`` in the shape the route at ``path`` answers with."""
    return stability_error(error) if path.startswith(STABILITY_PREFIXES) else error_response(error)
