"""How every error is answered: ``{"error": {"name", "message", ...}}`` with its status, on
Stability's routes (``/v1/generation/``, ``/v1/engines/``, ``/v1/user/``) in Stability's shape,
and on the OpenAI Images routes (``/v1/images/``) in OpenAI's: three views of the one table."""

from __future__ import annotations

import uuid

from fastapi.responses import JSONResponse

from latentq.errors import LatentqError, retry_after, stability_name

#: Where Stability's routes (and their error shape) live.
STABILITY_PREFIXES = ("/v1/generation/", "/v1/engines/", "/v1/user/")
#: Where Stability's v2beta routes (and its v2beta error shape) live.
STABILITY_V2_PREFIXES = ("/v2beta/",)
#: Where the OpenAI Images routes (and OpenAI's error shape) live.
OPENAI_PREFIXES = ("/v1/images/",)
#: OpenAI's error ``type`` by status; any other 4xx is ``invalid_request_error``.
_OPENAI_TYPES = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
#: Our request fields that OpenAI's body names otherwise.
_OPENAI_PARAMS = {
    "width": "size",
    "height": "size",
    "samples": "n",
    "init_image": "image",
    "mask_image": "mask",
}


def _headers(error: LatentqError) -> dict[str, str]:
    """The headers an answer of ``error`` carries in every shape but Stability's."""
    headers = {"WWW-Authenticate": "Bearer"} if error.status == 401 else {}
    if (seconds := retry_after(error)) is not None:
        headers["Retry-After"] = seconds
    return headers


def error_response(error: LatentqError) -> JSONResponse:
    """Render ``error`` as ``{"error": {"name", "message", ...}}`` with its status."""
    return JSONResponse({"error": error.to_dict()}, status_code=error.status, headers=_headers(error))


def stability_error(error: LatentqError) -> JSONResponse:
    """Render ``error`` in Stability's shape, with our status."""
    body = {"id": uuid.uuid4().hex, "name": stability_name(error.name), "message": error.message,
            "status": error.status}  # fmt: skip
    seconds = retry_after(error)
    retry = {"Retry-After": seconds} if seconds is not None else None
    return JSONResponse(body, status_code=error.status, headers=retry)


def stability_v2_error(error: LatentqError) -> JSONResponse:
    """Render ``error`` in Stability v2beta's shape (``{"id", "name", "errors": [message]}``)."""
    # v2beta names every invalid request bad_request.
    name = "bad_request" if error.status == 400 else stability_name(error.name)
    body = {"id": uuid.uuid4().hex, "name": name, "errors": [error.message]}
    seconds = retry_after(error)
    return JSONResponse(body, status_code=error.status, headers={"Retry-After": seconds} if seconds else None)


def openai_error(error: LatentqError) -> JSONResponse:
    """Render ``error`` in OpenAI's shape (``{"error": {"message", "type", "param", "code"}}``),
    with our status; ``code`` is our error's name, ``param`` the field in OpenAI's names."""
    kind = "server_error" if error.status >= 500 else _OPENAI_TYPES.get(error.status, "invalid_request_error")
    field = error.details.get("field")
    param = _OPENAI_PARAMS.get(field, field) if field else None
    body = {"message": error.message, "type": kind, "param": param, "code": error.name}
    return JSONResponse({"error": body}, status_code=error.status, headers=_headers(error))


def error_response_for(path: str, error: LatentqError) -> JSONResponse:
    """Render ``error`` in the shape the route at ``path`` answers with."""
    if path.startswith(STABILITY_PREFIXES):
        return stability_error(error)
    if path.startswith(STABILITY_V2_PREFIXES):
        return stability_v2_error(error)
    return openai_error(error) if path.startswith(OPENAI_PREFIXES) else error_response(error)
