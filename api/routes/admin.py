"""The operator's API under ``/v1/admin/`` (keys with the ``admin`` scope): accounts, keys,
credits and the audit trail. The caller's own account: ``GET /v1/account`` and its ledger.

Every change is appended to the audit stream with the acting key's id (``latentq.accounts``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from api.body_parsing import json_body_openapi, parse_body
from api.deps import AdminDep, CallerDep
from latentq.accounts import SCOPES

router = APIRouter(prefix="/v1", tags=["accounts"])

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "Invalid request"},
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key lacks the admin scope"},
    404: {"description": "No such account or key"},
}


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The error answers of an admin route: 401 and 403, and ``statuses`` of ``_ERRORS``."""
    return {status: _ERRORS[status] for status in (401, 403, *statuses)}


class AccountRequest(BaseModel):
    """Body of ``POST /v1/admin/accounts``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(min_length=1, max_length=64, description="Unique name of the account.")
    unlimited: bool = Field(False, description="Whether the account spends no credits.")


class KeyRequest(BaseModel):
    """Body of ``POST /v1/admin/keys``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    account: str = Field(min_length=1, max_length=64, description="The account's name or id.")
    scopes: list[str] = Field(min_length=1, max_length=len(SCOPES), description=f"Some of {list(SCOPES)}.")
    name: str = Field("", max_length=100, description="A label for the key.")
    expires_in_s: float | None = Field(None, gt=0, le=10 * 365 * 86400, description="Lifetime, seconds.")


class CreditsRequest(BaseModel):
    """Body of ``POST /v1/admin/credits``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    account: str = Field(min_length=1, max_length=64, description="The account's name or id.")
    amount: float = Field(ge=-1e9, le=1e9, description="Credits to add (negative: to take away).")


def _body(model: type[BaseModel]) -> Any:
    async def read(request: Request) -> BaseModel:
        return parse_body(model, await request.body())

    return Depends(read)


@router.get("/account", responses={401: _ERRORS[401]})
def my_account(caller: CallerDep) -> dict[str, Any]:
    """Return the caller's account (its credits: null when unlimited) and the calling key's scopes."""
    account = caller.services.tenants.account(caller.owner)
    return {**account, "key": {"id": caller.principal.key_id, "scopes": sorted(caller.principal.scopes)}}


@router.get("/account/ledger", responses={401: _ERRORS[401]})
def my_ledger(
    caller: CallerDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[str | None, Query(pattern=r"^\d{1,20}-\d{1,20}$")] = None,
) -> dict[str, Any]:
    """Return the caller's account's balance changes, newest first (``before``: an entry id)."""
    return {"entries": caller.services.tenants.ledger(caller.owner, limit, before)}


@router.get("/admin/accounts", responses=_errors())
def list_accounts(caller: AdminDep) -> dict[str, Any]:
    """Return every account."""
    return {"accounts": caller.services.tenants.list_accounts()}


@router.post(
    "/admin/accounts",
    status_code=201,
    responses=_errors(400),
    openapi_extra=json_body_openapi(AccountRequest),
)
def create_account(
    body: Annotated[AccountRequest, _body(AccountRequest)], caller: AdminDep
) -> dict[str, Any]:
    """Create an account."""
    return caller.services.tenants.create_account(body.name, caller.principal.key_id, body.unlimited)


@router.get("/admin/accounts/{account}", responses=_errors(404))
def get_account(account: str, caller: AdminDep) -> dict[str, Any]:
    """Return one account, by name or id."""
    return caller.services.tenants.account(account)


class LimitsRequest(BaseModel):
    """Body of ``PATCH /v1/admin/accounts/{account}``: the account's own limits (absent: unchanged,
    0: back to the service's default)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    rate_limit: int | None = Field(None, ge=0, le=1_000_000, description="Requests per period, per key.")
    rate_period_s: float | None = Field(None, ge=0, le=86400, description="The rate limit's period, seconds.")
    max_jobs: int | None = Field(None, ge=0, le=1_000_000, description="Queued + running jobs at once.")


@router.patch(
    "/admin/accounts/{account}", responses=_errors(400, 404), openapi_extra=json_body_openapi(LimitsRequest)
)
def set_limits(
    account: str, body: Annotated[LimitsRequest, _body(LimitsRequest)], caller: AdminDep
) -> dict[str, Any]:
    """Set an account's own limits; every API process applies them within a second."""
    return caller.services.tenants.set_limits(account, caller.principal.key_id, **body.model_dump())


@router.get("/admin/accounts/{account}/ledger", responses=_errors(400, 404))
def account_ledger(
    account: str, caller: AdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100
) -> dict[str, Any]:
    """Return an account's balance changes, newest first."""
    return {"entries": caller.services.tenants.ledger(account, limit)}


@router.get("/admin/keys", responses=_errors(400, 404))
def list_keys(
    caller: AdminDep, account: Annotated[str | None, Query(max_length=64)] = None
) -> dict[str, Any]:
    """Return the keys of one account, or of all (never a secret)."""
    return {"keys": caller.services.tenants.list_keys(account)}


@router.post(
    "/admin/keys", status_code=201, responses=_errors(400, 404), openapi_extra=json_body_openapi(KeyRequest)
)
def create_key(body: Annotated[KeyRequest, _body(KeyRequest)], caller: AdminDep) -> dict[str, Any]:
    """Make a key; the answer carries its ``secret``, shown this once."""
    key, secret = caller.services.tenants.create_key(
        body.account, body.scopes, caller.principal.key_id, body.name, body.expires_in_s
    )
    return {**key, "secret": secret}


@router.delete("/admin/keys/{key_id}", responses=_errors(404))
def revoke_key(key_id: str, caller: AdminDep) -> dict[str, Any]:
    """Revoke a key: every API process refuses it within a second."""
    return caller.services.tenants.revoke_key(key_id, caller.principal.key_id)


@router.post("/admin/credits", responses=_errors(400, 404), openapi_extra=json_body_openapi(CreditsRequest))
def grant_credits(body: Annotated[CreditsRequest, _body(CreditsRequest)], caller: AdminDep) -> dict[str, Any]:
    """Add credits to an account (a ledger entry); answer the account."""
    return caller.services.tenants.grant(body.account, body.amount, caller.principal.key_id)


@router.get("/admin/audit", responses=_errors(400))
def audit_log(caller: AdminDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict[str, Any]:
    """Return the newest administrative actions, newest first."""
    return {"entries": caller.services.tenants.audit_log(limit)}
