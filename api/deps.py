"""Dependencies of the route handlers: the app's services, and the caller (their key's account and
scopes).

Dependencies are ``async def`` and read ``app.state.services``, made once at start-up: FastAPI
runs a plain ``def`` dependency in its thread pool, and solves every sub-dependency on every
request; both dominated the submit path (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.services import Services
from latentq.accounts import Principal
from latentq.errors import LatentqError
from latentq.logs import add_log_fields


async def get_services(request: Request) -> Services:
    """Return the app's services."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def bearer_token(headers: Mapping[str, str]) -> str:
    """Return the token of ``Authorization: Bearer <token>`` in ``headers``; raise ``unauthorized``
    without one."""
    scheme, _, token = headers.get("authorization", "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise LatentqError("unauthorized")
    return token


def presented_key(headers: Mapping[str, str]) -> str:
    """Return the key of ``Authorization: Bearer <key>`` or of a bare ``Authorization: <key>``
    (as Stability's clients may send it); raise ``unauthorized`` without one."""
    header = headers.get("authorization", "").strip()
    if not header:
        raise LatentqError("unauthorized", "missing authorization header")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else header


async def authenticate(request: Request, token: str) -> Principal:
    """Return who ``token`` belongs to (looked up once per request: the request guard may have done
    it already); raise ``unauthorized``."""
    state = request.scope.setdefault("state", {})
    known = state.get("principal")
    if known is not None and known[0] == token:
        principal: Principal = known[1]
        return principal
    principal = await (await get_services(request)).keyring.authenticate(token)
    state["principal"] = (token, principal)
    add_log_fields(account=principal.handle)  # the request's lines from here on name its account
    return principal


def method_scope(method: str) -> str:
    """Return the scope a request of ``method`` needs: ``read`` to read, ``generate`` to change."""
    return "read" if method in ("GET", "HEAD") else "generate"


@dataclass(frozen=True)
class Caller:
    """Who is calling (the account that owns what they make, and their key) and the services to
    serve them with."""

    principal: Principal
    services: Services

    @property
    def owner(self) -> str:
        """The caller's account id: the owner of the jobs and settings they make."""
        return self.principal.account


async def caller_with(request: Request, token: str, scope: str) -> Caller:
    """Return the caller ``token`` says, authenticated, holding ``scope``."""
    principal = await authenticate(request, token)
    return Caller(principal.require(scope), await get_services(request))


async def get_caller(request: Request) -> Caller:
    """Return the caller of this request, authenticated, with the scope its method needs."""
    return await caller_with(request, bearer_token(request.headers), method_scope(request.method))


CallerDep = Annotated[Caller, Depends(get_caller)]


def caller_needing(scope: str) -> Callable[[Request], Awaitable[Caller]]:
    """Return the dependency of routes whose key must have ``scope``, whatever their method."""

    async def get_caller_with_scope(request: Request) -> Caller:
        return await caller_with(request, bearer_token(request.headers), scope)

    return get_caller_with_scope


#: The caller of an admin route (the ``admin`` scope).
AdminDep = Annotated[Caller, Depends(caller_needing("admin"))]
