"""How every error is answered: ``{"error": {"name", "message", ...}}`` with its status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from latentq.errors import RETRY_AFTER_S, LatentqError


def error_response(error: LatentqError) -> JSONResponse:
    """Render ``error`` as ``{"error": {"name", "message", ...}}`` with its status."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if error.name in RETRY_AFTER_S:
        headers["Retry-After"] = str(RETRY_AFTER_S[error.name])
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=headers)
