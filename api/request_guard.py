"""The guard in front of every request that carries a body: the API key is checked before a byte
of the body is read, and the body is counted while it streams in, so neither an anonymous client
nor a keyed one can make the process hold more than ``MAX_BODY_BYTES`` of it (a ``Content-Length``
over the limit is refused at once; a chunked body is cut off as it passes the limit).

A pure ASGI middleware: it sees the request before routing, parsing or any dependency runs.
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import bearer_token, check_api_key
from api.error_envelope import error_response
from api.uploads import MAX_IMAGE_BYTES
from latentq.errors import LatentqError

#: Largest request body accepted, bytes, JSON or multipart: room for two images of the upload
#: limit (base64 in our JSON routes, raw in Stability's multipart ones) and the fields around them.
MAX_BODY_BYTES = 2 * (MAX_IMAGE_BYTES * 4 // 3 + 4) + 1_000_000
#: Methods whose requests carry no body here: passed through untouched.
BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def _too_large() -> LatentqError:
    return LatentqError("payload_too_large", f"The request body exceeds {MAX_BODY_BYTES} bytes.")


class RequestGuard:
    """Refuses a request with a body under ``/v1/`` without a valid API key (401) or with a body
    over ``MAX_BODY_BYTES`` (413), before the app reads the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in BODILESS:
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        try:
            if scope["path"].startswith("/v1/"):
                check_api_key(bearer_token(headers), scope["app"].state.services)
            length = headers.get("content-length", "")
            if length.isdigit() and int(length) > MAX_BODY_BYTES:
                raise _too_large()
        except LatentqError as error:
            await error_response(error)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    raise _too_large()  # raised where the route reads the body: a named 413
            return message

        await self.app(scope, counted, send)
