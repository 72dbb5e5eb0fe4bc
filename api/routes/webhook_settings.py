"""Each API key's webhook settings: ``GET``/``PUT``/``DELETE /v1/webhook`` (the default webhook and
the signing secret), ``POST /v1/webhook/rotate-secret`` and ``DELETE /v1/webhook/disabled``. All
need the ``generate`` scope, reading too: the settings hold the secret that signs the account's
webhooks, which a read-only key (a dashboard's, say) must not be able to forge with."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from api.body_parsing import json_body_openapi, parse_body
from api.deps import Caller, caller_needing
from api.webhook_targets import webhook_target
from latentq.contract import MAX_WEBHOOK_URL_CHARS, WebhookEvent, WebhookFields
from latentq.webhook_accounts import WebhookAccounts

router = APIRouter(prefix="/v1", tags=["webhooks"])

_RESPONSES: dict[int | str, dict] = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "The key lacks the generate scope"},
}

#: The caller of a webhook settings route: ``generate``, reading too (the settings hold the secret).
SettingsCallerDep = Annotated[Caller, Depends(caller_needing("generate"))]


class WebhookDefaultRequest(WebhookFields):
    """Body of ``PUT /v1/webhook``: the webhook of this key's jobs that name none themselves."""

    model_config = ConfigDict(extra="forbid", strict=True)

    webhook_url: str = Field(
        min_length=1,
        max_length=MAX_WEBHOOK_URL_CHARS,
        description="http(s) URL to POST signed job events to.",
    )


class DisabledUrl(BaseModel):
    """A URL that answered 410 Gone: no webhooks go to it until ``until``."""

    url: str
    disabled_at: str
    until: str


class WebhookSettingsView(BaseModel):
    """This API key's webhook settings."""

    webhook_url: str | None = Field(description="The default webhook URL; null: none.")
    webhook_events: list[WebhookEvent] | None = Field(description="The default webhook's events.")
    secret: str = Field(description="The whsec_ secret that signs this key's webhooks (Standard Webhooks).")
    disabled_urls: list[DisabledUrl] = Field(description="URLs that answered 410 Gone, and until when.")


def _iso(epoch_s: float) -> str:
    return datetime.fromtimestamp(epoch_s, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def settings_view(accounts: WebhookAccounts, owner: str) -> WebhookSettingsView:
    """Return ``owner``'s webhook settings."""
    default = accounts.default(owner)
    return WebhookSettingsView(
        webhook_url=default.url if default else None,
        webhook_events=default.events if default else None,
        secret=accounts.secret(owner),
        disabled_urls=[
            DisabledUrl(url=entry["url"], disabled_at=_iso(entry["disabled_at"]), until=_iso(entry["until"]))
            for entry in accounts.disabled_urls(owner)
        ],
    )


@router.get("/webhook", responses=_RESPONSES)
def get_webhook(caller: SettingsCallerDep) -> WebhookSettingsView:
    """Return this key's default webhook (if any), its signing secret and its disabled URLs."""
    return settings_view(caller.services.accounts, caller.owner)


async def read_default_request(request: Request) -> WebhookDefaultRequest:
    """Parse the body as a ``WebhookDefaultRequest``."""
    return parse_body(WebhookDefaultRequest, await request.body())


@router.put(
    "/webhook",
    responses={400: {"description": "Invalid or refused URL"}, **_RESPONSES},
    openapi_extra=json_body_openapi(WebhookDefaultRequest),
)
def set_webhook(
    body: Annotated[WebhookDefaultRequest, Depends(read_default_request)], caller: SettingsCallerDep
) -> WebhookSettingsView:
    """Set the webhook of this key's jobs that name none (``webhook_events`` default ``[completed]``);
    jobs copy it when they are submitted."""
    allowed = caller.services.settings.webhook_allowed_hosts
    target = webhook_target(body.webhook_url, body.webhook_events, None, allowed)
    caller.services.accounts.set_default(caller.owner, target)
    return settings_view(caller.services.accounts, caller.owner)


@router.delete("/webhook", responses=_RESPONSES)
def delete_webhook(caller: SettingsCallerDep) -> WebhookSettingsView:
    """Remove this key's default webhook (jobs already submitted keep theirs); the secret stays."""
    accounts = caller.services.accounts
    accounts.set_default(caller.owner, None)
    return settings_view(accounts, caller.owner)


@router.post("/webhook/rotate-secret", responses=_RESPONSES)
def rotate_secret(caller: SettingsCallerDep) -> WebhookSettingsView:
    """Replace this key's signing secret. For 24 hours deliveries carry two signatures, the new
    secret's and the old one's, so receivers can switch without losing a webhook."""
    accounts = caller.services.accounts
    accounts.rotate(caller.owner)
    return settings_view(accounts, caller.owner)


@router.delete("/webhook/disabled", responses=_RESPONSES)
def enable_urls(caller: SettingsCallerDep) -> WebhookSettingsView:
    """Send webhooks again to every URL that answered 410 Gone."""
    accounts = caller.services.accounts
    accounts.enable_all(caller.owner)
    return settings_view(accounts, caller.owner)
