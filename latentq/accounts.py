"""Accounts (tenants) and their managed API keys, in Redis.

An account owns API keys, jobs, webhook settings and a credit balance; its id is what the rest of
the service calls the *owner* of a job. A managed key is ``lq_`` and 32 random bytes (URL-safe
base64), shown once when it is made: Redis keeps only its SHA-256 (enough for a secret of that
entropy), with its id, name, account, scopes, and created / last-used / expiry / revoked times.

Bootstrap keys (``LATENTQ_API_KEYS``, for development and first set-up) have every scope and an
unlimited balance; each is the account ``sha256(key)[:16]``, the owner id a key had before accounts
existed, so its jobs and webhook settings stay with it. The account is written on first use, named
``bootstrap-`` and random hex, the name it is shown and looked up by (its id, a digest of the key,
never leaves the service).

Every change made through here is appended to the audit stream (who, what, when).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from redis.exceptions import ResponseError

from latentq.errors import LatentqError
from latentq.keys import (
    ACCOUNT_NAMES,
    API_KEY_IDS,
    AUDIT_STREAM,
    account_key,
    account_keys_key,
    api_key_key,
    ledger_key,
)

#: What a key may do: ``generate`` (submit, quote, cancel, change webhook settings), ``read`` (read
#: jobs, events, images, models, the account and its ledger), ``admin`` (the operator's API).
SCOPES = ("generate", "read", "admin")
#: How a managed key's secret starts.
SECRET_PREFIX = "lq_"
#: Shortest bootstrap key the API accepts in production (``LATENTQ_ENV=production``).
MIN_BOOTSTRAP_KEY_LENGTH = 32
#: Audit entries kept (the oldest are trimmed beyond this).
AUDIT_LENGTH = 100_000
#: Ledger entries kept per account.
LEDGER_LENGTH = 100_000
#: Credits are kept as integer thousandths, so sums never drift.
MILLI = 1000
#: A last-used time is written at most this often per key and API process, seconds.
LAST_USED_EVERY_S = 60.0
#: An account's own limits, each replacing the service's default (``latentq.settings``), and
#: their kind: requests per period for each of its keys, queued + running jobs at once.
LIMITS: dict[str, type] = {"rate_limit": int, "rate_period_s": float, "max_jobs": int}
#: What an account id looks like: a managed account's, or a bootstrap key's (16 hex digits).
ACCOUNT_ID = re.compile(r"^(acct_)?[0-9a-f]{16}$")
ACCOUNT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")


def new_secret() -> str:
    """Return a fresh managed key secret."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def secret_digest(secret: str) -> str:
    """Return the digest a key is stored under."""
    return hashlib.sha256(secret.encode()).hexdigest()


def bootstrap_account(key: str) -> str:
    """Return the account id of bootstrap key ``key`` (the owner id keys had before accounts)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_scopes(value: str | Iterable[str]) -> tuple[str, ...]:
    """Return the scopes named in ``value`` (comma-separated or a list), checked, in table order."""
    names = {item.strip() for item in (value.split(",") if isinstance(value, str) else value)}
    names.discard("")
    unknown = sorted(names - set(SCOPES))
    if unknown or not names:
        raise LatentqError.for_field(
            "invalid_request", "scopes", f"scopes must be some of {', '.join(SCOPES)}; got {sorted(names)}"
        )
    return tuple(scope for scope in SCOPES if scope in names)


@dataclass(frozen=True)
class Principal:
    """Who is calling: the account, the key (its id, never its secret) and what it may do."""

    account: str
    #: The key's id; a bootstrap key's is its account's name.
    key_id: str
    scopes: frozenset[str]
    bootstrap: bool = False
    #: The account's settings as stored (limits, ``unlimited``); empty for a bootstrap key.
    limits: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def handle(self) -> str:
        """The account's public id, as ``/v1/account`` shows it: a managed account's id, or a
        bootstrap account's name (its id is a digest of its key, never shown)."""
        return self.key_id if self.bootstrap else self.account

    def require(self, scope: str) -> Principal:
        """Return self if this key has ``scope``; raise ``permission_denied`` otherwise."""
        if scope not in self.scopes:
            raise LatentqError("permission_denied", f"This API key lacks the '{scope}' scope.")
        return self


def _text(fields: Any) -> dict[str, str]:
    return {key.decode(): value.decode() for key, value in fields.items()}


def _now() -> float:
    return round(time.time(), 3)


def principal_of(fields: dict[str, str], account: dict[str, str], now: float) -> Principal | None:
    """Return the principal of a stored key record (and its account's), or None if the key is
    revoked, expired, or its account is gone."""
    if not fields or fields.get("revoked_at") or not account:
        return None
    expires = fields.get("expires_at")
    if expires and float(expires) <= now:
        return None
    scopes = frozenset(fields.get("scopes", "").split(","))
    return Principal(fields["account"], fields["key_id"], scopes, limits=account)


class Accounts:
    """The accounts, keys, balances, ledger and audit trail, on a sync Redis client (the admin
    command and the admin API; the API's hot path reads through ``api.keyring``)."""

    def __init__(self, redis: Redis) -> None:
        self.redis = redis

    # Accounts ---------------------------------------------------------------------------------

    def create_account(self, name: str, actor: str, unlimited: bool = False) -> dict[str, str]:
        """Create account ``name`` (unique); return it."""
        if not ACCOUNT_NAME.match(name):
            raise LatentqError.for_field(
                "invalid_request", "name", "name must be 1-64 letters, digits, '_', '.', '@' or '-'"
            )
        account_id = "acct_" + uuid.uuid4().hex[:16]
        if not self.redis.hsetnx(ACCOUNT_NAMES, name, account_id):
            raise LatentqError.for_field("invalid_request", "name", f"an account named {name!r} exists")
        fields: dict[Any, Any] = {"id": account_id, "name": name, "created_at": str(_now()),
                                  "balance": "0", "unlimited": "1" if unlimited else "0"}  # fmt: skip
        self.redis.hset(account_key(account_id), mapping=fields)
        self.audit(actor, "accounts.create", account_id, name=name, unlimited=unlimited)
        return self.describe_account(fields)

    def ensure_bootstrap_account(self, account_id: str) -> str:
        """Write the account of a bootstrap key on its first use (unlimited; named ``bootstrap-`` and
        random hex, not from its id, a digest of the key); return its name."""
        key = account_key(account_id)
        name = f"bootstrap-{secrets.token_hex(4)}"
        if self.redis.hsetnx(key, "name", name):  # the first process to get here names it
            fields: dict[Any, Any] = {"id": account_id, "created_at": str(_now()), "balance": "0",
                                      "unlimited": "1", "bootstrap": "1"}  # fmt: skip
            self.redis.hset(key, mapping=fields)
            self.redis.hset(ACCOUNT_NAMES, name, account_id)
            return name
        return str(self.redis.hget(key, "name").decode())  # type: ignore[union-attr]

    def account_id(self, name_or_id: str) -> str:
        """Return the id of the account named (or with id) ``name_or_id``; raise ``not_found``."""
        if ACCOUNT_ID.match(name_or_id) and self.redis.hexists(account_key(name_or_id), "id"):
            return name_or_id
        found: Any = self.redis.hget(ACCOUNT_NAMES, name_or_id)
        if found is None:
            raise LatentqError("not_found", f"No account {name_or_id!r}.")
        return str(found.decode())

    def account(self, name_or_id: str) -> dict[str, Any]:
        """Return the account named (or with id) ``name_or_id``."""
        return self.describe_account(_text(self.redis.hgetall(account_key(self.account_id(name_or_id)))))

    def list_accounts(self) -> list[dict[str, Any]]:
        """Return every account, by name."""
        names: Any = self.redis.hgetall(ACCOUNT_NAMES)
        pipeline = self.redis.pipeline(transaction=False)
        for _, account_id in sorted(names.items()):
            pipeline.hgetall(account_key(account_id.decode()))
        return [self.describe_account(_text(fields)) for fields in pipeline.execute() if fields]

    def set_limits(self, account: str, actor: str, **limits: float | None) -> dict[str, Any]:
        """Set some of ``account``'s own limits (``LIMITS``; None: leave as is, 0: back to the
        service's default); return the account. API processes apply them within a second."""
        account_id = self.account_id(account)
        unknown = sorted(set(limits) - set(LIMITS))
        if unknown:
            raise LatentqError.for_field("unknown_field", unknown[0], f"Unknown limit '{unknown[0]}'.")
        given = {name: value for name, value in limits.items() if value is not None}
        for name, value in given.items():
            if not math.isfinite(value):
                raise LatentqError.for_field("invalid_request", name, f"{name} must be a finite number")
            if value < 0 or (LIMITS[name] is int and value != int(value)):
                raise LatentqError.for_field("invalid_request", name, f"{name} must be a whole number >= 0")
            if name == "rate_period_s" and 0 < value < 0.01:
                raise LatentqError.for_field("invalid_request", name, "rate_period_s must be 0 or >= 0.01")
        key = account_key(account_id)
        pipeline = self.redis.pipeline()
        for name, value in given.items():
            if value:
                pipeline.hset(key, name, str(LIMITS[name](value)))
            else:
                pipeline.hdel(key, name)
        pipeline.execute()
        self.audit(actor, "accounts.limits", account_id, **given)
        return self.account(account_id)

    @staticmethod
    def describe_account(fields: dict[str, str]) -> dict[str, Any]:
        """Return an account as the admin API and command show it."""
        unlimited = fields.get("unlimited") == "1"
        return {
            # A bootstrap account is known by its name outside: its id is a digest of its key.
            "id": fields["name"] if fields.get("bootstrap") else fields["id"],
            "name": fields["name"],
            "created_at": float(fields["created_at"]),
            "unlimited": unlimited,
            "credits": None if unlimited else int(fields.get("balance", "0")) / MILLI,
            # The account's own limits; null: the service's default.
            "limits": {name: kind(fields[name]) if name in fields else None for name, kind in LIMITS.items()},
        }

    # Keys -------------------------------------------------------------------------------------

    def create_key(
        self,
        account: str,
        scopes: str | Iterable[str],
        actor: str,
        name: str = "",
        expires_in_s: float | None = None,
    ) -> tuple[dict[str, Any], str]:
        """Make a key for ``account`` with ``scopes``; return its description and its secret (shown
        this once: only its digest is kept)."""
        account_id = self.account_id(account)
        checked = parse_scopes(scopes)
        if expires_in_s is not None and expires_in_s <= 0:
            raise LatentqError.for_field("invalid_request", "expires_in_s", "expires_in_s must be > 0")
        secret = new_secret()
        digest = secret_digest(secret)
        key_id = "key_" + uuid.uuid4().hex[:16]
        now = _now()
        fields: dict[Any, Any] = {
            "key_id": key_id, "account": account_id, "scopes": ",".join(checked), "name": name[:100],
            "created_at": str(now), "prefix": secret[:7],
            "expires_at": str(now + expires_in_s) if expires_in_s else "",
        }  # fmt: skip
        pipeline = self.redis.pipeline()
        pipeline.hset(api_key_key(digest), mapping=fields)
        pipeline.hset(API_KEY_IDS, key_id, digest)
        pipeline.sadd(account_keys_key(account_id), key_id)
        pipeline.execute()
        self.audit(actor, "keys.create", key_id, account=account_id, scopes=list(checked), name=name)
        return self.describe_key(fields), secret

    def _key_fields(self, key_id: str) -> tuple[str, dict[str, str]]:
        digest: Any = self.redis.hget(API_KEY_IDS, key_id)
        if digest is None:
            raise LatentqError("not_found", f"No API key {key_id!r}.")
        return digest.decode(), _text(self.redis.hgetall(api_key_key(digest.decode())))

    def list_keys(self, account: str | None = None) -> list[dict[str, Any]]:
        """Return the keys of ``account`` (all accounts' if None), oldest first; never a secret."""
        if account is None:
            ids: Any = self.redis.hkeys(API_KEY_IDS)
        else:
            ids = self.redis.smembers(account_keys_key(self.account_id(account)))
        keys = [self.describe_key(self._key_fields(key_id.decode())[1]) for key_id in ids]
        return sorted(keys, key=lambda key: (key["created_at"], key["id"]))

    def revoke_key(self, key_id: str, actor: str) -> dict[str, Any]:
        """Revoke key ``key_id``: every API process refuses it within ``api.keyring.CACHE_S``."""
        digest, fields = self._key_fields(key_id)
        if not fields.get("revoked_at"):
            fields["revoked_at"] = str(_now())
            self.redis.hset(api_key_key(digest), "revoked_at", fields["revoked_at"])
            self.audit(actor, "keys.revoke", key_id, account=fields["account"])
        return self.describe_key(fields)

    @staticmethod
    def describe_key(fields: dict[str, str]) -> dict[str, Any]:
        """Return a key as the admin API and command show it (its first characters, not its secret)."""

        def when(name: str) -> float | None:
            return float(fields[name]) if fields.get(name) else None

        return {
            "id": fields["key_id"],
            "account": fields["account"],
            "name": fields.get("name", ""),
            "scopes": fields["scopes"].split(","),
            "prefix": fields.get("prefix", ""),
            "created_at": float(fields["created_at"]),
            "last_used_at": when("last_used_at"),
            "expires_at": when("expires_at"),
            "revoked_at": when("revoked_at"),
        }

    # Credits ----------------------------------------------------------------------------------

    def grant(self, account: str, amount: float, actor: str) -> dict[str, Any]:
        """Add ``amount`` credits (negative: take away) to ``account``; return the account."""
        if not math.isfinite(amount):
            raise LatentqError.for_field("invalid_request", "amount", "amount must be a finite number")
        account_id = self.account_id(account)
        milli = round(amount * MILLI)
        balance = self.redis.hincrby(account_key(account_id), "balance", milli)
        self.ledger_entry(account_id, milli, int(balance), "grant")  # who granted: the audit trail
        self.audit(actor, "credits.grant", account_id, amount=amount)
        return self.account(account_id)

    def ledger_entry(self, account_id: str, milli: int, balance: int, reason: str, **more: str) -> None:
        """Append a change of ``account_id``'s balance to its ledger."""
        entry: dict[Any, Any] = {
            "amount": str(milli / MILLI),
            "balance": str(balance / MILLI),
            "reason": reason,
            **more,
        }
        self.redis.xadd(ledger_key(account_id), entry, maxlen=LEDGER_LENGTH, approximate=True)

    def ledger(self, account: str, count: int = 100, before: str | None = None) -> list[dict[str, Any]]:
        """Return up to ``count`` of the account's ledger entries, newest first (before entry id
        ``before`` when given)."""
        upper = f"({before}" if before else "+"
        try:
            entries: Any = self.redis.xrevrange(ledger_key(self.account_id(account)), upper, "-", count=count)
        except ResponseError:  # an id Redis cannot take (0-0, or past its range)
            raise LatentqError.for_field(
                "invalid_request", "before", "before is not a ledger entry id"
            ) from None
        return [_ledger_view(entry_id.decode(), _text(fields)) for entry_id, fields in entries]

    # Audit ------------------------------------------------------------------------------------

    def audit(self, actor: str, action: str, target: str, **detail: Any) -> None:
        """Append an administrative action to the audit stream."""
        entry: dict[Any, Any] = {"actor": actor, "action": action, "target": target, "at": str(_now()),
                 "detail": json.dumps(detail, sort_keys=True)}  # fmt: skip
        self.redis.xadd(AUDIT_STREAM, entry, maxlen=AUDIT_LENGTH, approximate=True)

    def audit_log(self, count: int = 100) -> list[dict[str, Any]]:
        """Return the newest ``count`` audit entries, newest first."""
        entries: Any = self.redis.xrevrange(AUDIT_STREAM, "+", "-", count=count)
        out = []
        for entry_id, raw in entries:
            fields = _text(raw)
            out.append({"id": entry_id.decode(), "actor": fields["actor"], "action": fields["action"],
                        "target": fields["target"], "at": float(fields["at"]),
                        "detail": json.loads(fields["detail"])})  # fmt: skip
        return out


def _ledger_view(entry_id: str, fields: dict[str, str]) -> dict[str, Any]:
    millis = int(entry_id.split("-")[0])
    view: dict[str, Any] = {
        "id": entry_id,
        "at": millis / 1000,
        "reason": fields.pop("reason"),
        "amount": float(fields.pop("amount")),
        "balance": float(fields.pop("balance")),
    }
    view.update(fields)  # job, actor
    return view


def matches_bootstrap(token: str, keys: Iterable[str]) -> bool:
    """Whether ``token`` is one of the bootstrap ``keys`` (compared in constant time with each)."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(token.encode(), key.encode())
    return found
