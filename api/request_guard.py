"""What every request passes through before routing.

``RequestGuard``, in front of every request under ``/v1/`` that carries a body or a key: the API
key is checked before a byte of the body is read, and counted against its rate limit
(``api.rate_limit``: a 429 ``rate_limited`` over it, and ``RateLimit-*`` headers on every answer).
The body is counted while it streams in, so neither an anonymous client nor a keyed one can make
the process hold more than its route's limit of it (``MAX_BODY_BYTES`` where images come,
``MAX_JSON_BYTES`` elsewhere; a ``Content-Length`` over the limit is refused at once; a chunked
body is cut off as it passes it). A request with a body needs its route's scope before any of it
is read, and a submit of a key this process has seen refused is refused again, at once, until the
key's retry time (its own check is made after the body, in the submit's script).

``SecurityHeaders``: every answer says ``nosniff``, ``no-referrer`` and, unless it says otherwise,
``no-store`` (answers carry presigned URLs and webhook secrets: no cache keeps them).

Pure ASGI middlewares: they see the request before routing, parsing or any dependency runs.
"""

from __future__ import annotations

from contextlib import suppress

from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.deps import presented_key
from api.error_envelope import error_response_for
from api.rate_limit import DEFERRED, RateCheck, rate_policy
from api.uploads import MAX_IMAGE_BYTES
from latentq.errors import LatentqError
from latentq.logs import add_log_fields

#: Largest body of a route that takes images, bytes, JSON or multipart: room for two images of the
#: upload limit (base64 in our JSON routes, raw in Stability's multipart ones) and the fields around them.
MAX_BODY_BYTES = 2 * (MAX_IMAGE_BYTES * 4 // 3 + 4) + 1_000_000
#: Largest body of every other route (admin, webhook settings), bytes.
MAX_JSON_BYTES = 1_000_000
#: The routes that queue a job: their rate check is made in the submit's own script call.
SUBMIT_PATHS = ("/v1/generate", "/v1/upscale", "/v1/generation/", "/v1/images/")
#: The routes that take images (``MAX_BODY_BYTES``): those that queue a job, and quotes for them.
IMAGE_PATHS = (*SUBMIT_PATHS, "/v1/quote")
#: Methods whose requests carry no body here: passed through untouched.
BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def body_limit(path: str) -> int:
    """The largest body the route at ``path`` takes, bytes."""
    return MAX_BODY_BYTES if path.startswith(IMAGE_PATHS) else MAX_JSON_BYTES


def body_scope(path: str) -> str:
    """The scope a request with a body to ``path`` needs: checked before its body is read."""
    return "admin" if path.startswith("/v1/admin/") else "generate"


def _too_large(limit: int) -> LatentqError:
    return LatentqError("payload_too_large", f"The request body exceeds {limit} bytes.")


class RequestGuard:
    """Refuses a request with a body under ``/v1/`` without a valid API key (401), with a key
    lacking the scope its route needs (403), one over its key's rate (429) or with a body over its
    route's limit (413), before the app reads the body."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        bodied = scope["method"] not in BODILESS
        rate: RateCheck | None = None

        async def send_with_rate(message: Message) -> None:
            if rate is not None and message["type"] == "http.response.start":
                if rate.verdict is None:  # a submit that ended before its script call: counted now
                    with suppress(RedisError):
                        await scope["app"].state.services.limiter.check(rate)
                if rate.verdict is not None:
                    scope["app"].state.services.limiter.remember(rate)
                    message = {**message, "headers": [*message.get("headers", []), *rate.verdict.headers()]}
            await send(message)

        deferred = None
        try:
            if scope["path"].startswith("/v1/") and (bodied or "authorization" in headers):
                # In any form a route takes (Stability's take a bare key); the route checks its own.
                token = presented_key(headers)
                services = scope["app"].state.services
                principal = await services.keyring.authenticate(token)
                scope.setdefault("state", {})["principal"] = (token, principal)  # for the route
                add_log_fields(account=principal.handle)  # the request's lines from here on
                if bodied:
                    principal.require(body_scope(scope["path"]))
                policy = rate_policy(principal, services.settings)
                if policy is not None:
                    rate = RateCheck(principal.key_id, *policy)
                    if bodied and scope["path"].startswith(SUBMIT_PATHS):
                        if services.limiter.still_refused(rate):
                            raise rate.refusal()
                        deferred = DEFERRED.set(rate)  # made in the submit's own script call
                    elif not (await services.limiter.check(rate)).admitted:
                        raise rate.refusal()
            length, limit = headers.get("content-length", ""), body_limit(scope["path"])
            if bodied and length.isdigit() and int(length) > limit:
                raise _too_large(limit)
        except RedisError:  # the key could not be looked up
            await error_response_for(scope["path"], LatentqError("service_unavailable"))(scope, receive, send)
            return
        except LatentqError as error:
            await error_response_for(scope["path"], error)(scope, receive, send_with_rate)
            return
        try:
            await self._serve(scope, receive, send_with_rate, bodied)
        finally:
            if deferred is not None:
                DEFERRED.reset(deferred)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, bodied: bool) -> None:
        if not bodied:
            await self.app(scope, receive, send)
            return
        received = 0
        limit = body_limit(scope["path"])

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _too_large(limit)  # raised where the route reads the body: a named 413
            return message

        await self.app(scope, counted, send)


#: Headers every answer carries; ``Cache-Control`` only where the route set none.
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer")]


class SecurityHeaders:
    """Adds ``SECURITY_HEADERS`` and ``Cache-Control: no-store`` (unless set) to every answer."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {name.lower() for name, _ in headers}
                headers += [item for item in SECURITY_HEADERS if item[0] not in names]
                if b"cache-control" not in names:
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)
