"""``latentq-admin``: the operator's command for accounts, API keys and credits.

It works on Redis directly (``LATENTQ_REDIS_URL``, as every latentq process). Run in the checkout
of a running ``make run`` stack with no ``LATENTQ_REDIS_URL`` set, it reads that stack's settings
from ``.run/admin.env``. Every change is audited, with the actor ``admin-cli:<user>``.

    latentq-admin accounts create NAME [--unlimited]
    latentq-admin accounts list
    latentq-admin accounts limits NAME [--rate-limit N] [--rate-period-s S] [--max-jobs N]
    latentq-admin keys create --account NAME --scopes generate,read [--name N] [--expires-in-s S]
    latentq-admin keys list [--account NAME]
    latentq-admin keys revoke KEY_ID
    latentq-admin credits grant NAME AMOUNT
    latentq-admin audit [--limit N]

``keys create`` prints the new secret alone on its last line (it is shown this once); ``--json``
prints JSON for scripts instead.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from pathlib import Path
from typing import Any

from redis.exceptions import RedisError

from latentq.accounts import Accounts
from latentq.errors import LatentqError
from latentq.redis_client import redis_client
from latentq.settings import CommonSettings

#: Where ``make run`` leaves the settings this command needs (relative to the checkout).
DEV_SETTINGS = Path(".run") / "admin.env"


def redis_url(cwd: Path) -> str:
    """The Redis URL: ``LATENTQ_REDIS_URL``, else the ``make run`` stack's under ``cwd``, else the
    default."""
    if "LATENTQ_REDIS_URL" not in os.environ and (cwd / DEV_SETTINGS).exists():
        for line in (cwd / DEV_SETTINGS).read_text().splitlines():
            name, _, value = line.partition("=")
            if name.strip() == "LATENTQ_REDIS_URL":
                return value.strip()
    return CommonSettings().redis_url


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="latentq-admin", description=__doc__.split("\n\n")[0])
    top.add_argument("--json", action="store_true", help="print JSON (for scripts)")
    groups = top.add_subparsers(dest="group", required=True)
    accounts = groups.add_parser("accounts").add_subparsers(dest="action", required=True)
    create = accounts.add_parser("create")
    create.add_argument("name")
    create.add_argument("--unlimited", action="store_true", help="the account spends no credits")
    accounts.add_parser("list")
    limits = accounts.add_parser("limits", help="set an account's own limits (0: the default)")
    limits.add_argument("name")
    limits.add_argument("--rate-limit", type=int, default=None, help="requests per period, per key")
    limits.add_argument("--rate-period-s", type=float, default=None)
    limits.add_argument("--max-jobs", type=int, default=None, help="queued + running jobs at once")
    keys = groups.add_parser("keys").add_subparsers(dest="action", required=True)
    make = keys.add_parser("create")
    make.add_argument("--account", required=True)
    make.add_argument("--scopes", required=True, help="comma-separated: generate, read, admin")
    make.add_argument("--name", default="")
    make.add_argument("--expires-in-s", type=float, default=None)
    listing = keys.add_parser("list")
    listing.add_argument("--account", default=None)
    revoke = keys.add_parser("revoke")
    revoke.add_argument("key_id")
    credits = groups.add_parser("credits").add_subparsers(dest="action", required=True)
    grant = credits.add_parser("grant")
    grant.add_argument("name")
    grant.add_argument("amount", type=float)
    audit = groups.add_parser("audit")
    audit.add_argument("--limit", type=int, default=50)
    return top


def run(args: argparse.Namespace, accounts: Accounts, actor: str) -> tuple[Any, str]:
    """Do what ``args`` say; return the result (for ``--json``) and its text for people."""
    command = (args.group, getattr(args, "action", None))
    if command == ("accounts", "create"):
        account = accounts.create_account(args.name, actor, args.unlimited)
        return account, _account_line(account)
    if command == ("accounts", "list"):
        found = accounts.list_accounts()
        return found, "\n".join(_account_line(account) for account in found)
    if command == ("accounts", "limits"):
        account = accounts.set_limits(args.name, actor, rate_limit=args.rate_limit,
                                      rate_period_s=args.rate_period_s, max_jobs=args.max_jobs)  # fmt: skip
        return account, _account_line(account)
    if command == ("keys", "create"):
        key, secret = accounts.create_key(args.account, args.scopes, actor, args.name, args.expires_in_s)
        return {**key, "secret": secret}, f"{_key_line(key)}\n{secret}"
    if command == ("keys", "list"):
        found = accounts.list_keys(args.account)
        return found, "\n".join(_key_line(key) for key in found)
    if command == ("keys", "revoke"):
        key = accounts.revoke_key(args.key_id, actor)
        return key, f"revoked {_key_line(key)}"
    if command == ("credits", "grant"):
        account = accounts.grant(args.name, args.amount, actor)
        return account, _account_line(account)
    entries = accounts.audit_log(args.limit)
    return entries, "\n".join(
        f"{e['at']:.0f} {e['actor']} {e['action']} {e['target']} {e['detail']}" for e in entries
    )


def _account_line(account: dict[str, Any]) -> str:
    credits = "unlimited" if account["unlimited"] else f"{account['credits']:g} credits"
    limits = " ".join(f"{name}={value:g}" for name, value in account["limits"].items() if value is not None)
    return f"{account['id']}\t{account['name']}\t{credits}\t{limits}".rstrip()


def _key_line(key: dict[str, Any]) -> str:
    state = " revoked" if key["revoked_at"] else ""
    return (
        f"{key['id']}\t{key['account']}\t{','.join(key['scopes'])}\t{key['prefix']}...\t{key['name']}{state}"
    )


def _user() -> str:
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # a container user with no name
        return str(os.getuid())


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    accounts = Accounts(
        redis_client(CommonSettings(redis_url=redis_url(Path.cwd())), socket_connect_timeout=5)
    )
    try:
        result, text = run(args, accounts, f"admin-cli:{_user()}")
    except LatentqError as error:
        print(f"latentq-admin: {error.message}", file=sys.stderr)
        return 2
    except RedisError as error:
        print(f"latentq-admin: Redis unreachable: {error}", file=sys.stderr)
        return 3
    print(json.dumps(result, indent=2) if args.json else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
