"""Request ids: every request gets one, every answer says it (``X-Request-Id``), and every log line
of the request carries it, as do the job it submits and that job's lines in the worker and the
dispatcher.

A client's own ``X-Request-Id`` is kept when it is sane (``MAX_REQUEST_ID_CHARS`` at most, of
``REQUEST_ID_CHARACTERS``): it then ties the client's logs to ours. Anything else is replaced by a
new id, so no header can forge a log field or split a line.
"""

from __future__ import annotations

import re
import secrets

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from latentq.logs import add_log_fields, log_fields

#: The header a request id comes in and goes back in.
REQUEST_ID_HEADER = "X-Request-Id"
#: Longest client request id kept, characters.
MAX_REQUEST_ID_CHARS = 128
#: Characters a client request id may hold: letters, digits and ``- _ . : / + = @``.
REQUEST_ID_CHARACTERS = "A-Za-z0-9._:/+=@-"

_SANE = re.compile(rf"[{REQUEST_ID_CHARACTERS}]{{1,{MAX_REQUEST_ID_CHARS}}}", re.ASCII)
_HEADER = REQUEST_ID_HEADER.lower().encode()


def new_request_id() -> str:
    """Return a new request id: 32 random hex digits."""
    return secrets.token_hex(16)


def request_id_for(header: str | None) -> str:
    """Return the id of a request whose ``X-Request-Id`` is ``header``: the client's if sane, else
    a new one."""
    if header is not None and _SANE.fullmatch(header):
        return header
    return new_request_id()


def current_request_id() -> str | None:
    """Return the id of the request being served (None outside one)."""
    value = log_fields().get("request_id")
    return value if isinstance(value, str) else None


class RequestIds:
    """Gives each HTTP request its id: in its log context (``latentq.logs``), in
    ``scope["state"]["request_id"]`` and in the ``X-Request-Id`` header of its answer. Added last,
    so it is outside every other middleware of ours and their answers carry the id too."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        header = next((value for name, value in scope["headers"] if name == _HEADER), None)
        request_id = request_id_for(header.decode("latin-1") if header is not None else None)
        scope.setdefault("state", {})["request_id"] = request_id
        pair = (_HEADER, request_id.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), pair]}
            await send(message)

        # Set for the rest of this request's task, not reset here: an unhandled error is answered and
        # logged outside this middleware (Starlette's ServerErrorMiddleware, then uvicorn), and those
        # lines are the request's too. Each request runs in a task of its own, with its own context.
        add_log_fields(request_id=request_id)
        await self.app(scope, receive, send_with_id)
