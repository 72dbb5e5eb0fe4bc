"""Dependencies of the route handlers: the app's services, and the caller's API key.

Dependencies are ``async def`` and read ``app.state.services``, made once at start-up: FastAPI
runs a plain ``def`` dependency in its thread pool, and solves every sub-dependency on every
request; both dominated the submit path (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from api.services import Services
from latentq.errors import LatentqError


async def get_services(request: Request) -> Services:
    """Return the app's services."""
    services: Services = request.app.state.services
    return services


ServicesDep = Annotated[Services, Depends(get_services)]


def check_api_key(token: str, services: Services) -> str:
    """Return ``token`` if it is a configured API key; raise ``unauthorized`` otherwise."""
    # Compare against every key, in constant time each, so timing reveals nothing.
    matches = [hmac.compare_digest(token.encode(), key.encode()) for key in services.settings.api_keys]
    if not any(matches):
        raise LatentqError("unauthorized", "The API key is not valid.")
    return token


def key_owner(api_key: str) -> str:
    """Return the id the service knows an API key by (a digest: the key itself is never stored)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


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


async def require_api_key(request: Request) -> str:
    """Return the caller's API key (``Authorization: Bearer <key>``); raise ``unauthorized``."""
    return check_api_key(bearer_token(request.headers), await get_services(request))


ApiKeyDep = Annotated[str, Depends(require_api_key)]


@dataclass(frozen=True)
class Caller:
    """Who is calling (the owner id of their API key) and the services to serve them with."""

    owner: str
    services: Services


async def get_caller(request: Request) -> Caller:
    """Return the caller of this request, authenticated (one dependency, no thread: no I/O)."""
    services = await get_services(request)
    return Caller(key_owner(check_api_key(bearer_token(request.headers), services)), services)


CallerDep = Annotated[Caller, Depends(get_caller)]
