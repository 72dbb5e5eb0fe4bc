"""Accounts and managed API keys, against two real API processes and real Redis: keys made by
``latentq-admin`` and the admin API work at once, a revoked key is refused everywhere within a
second, scopes hold, an account's keys share its jobs and no other account sees them."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import io
import json
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import suppress
from pathlib import Path
from typing import Any

import httpx
import pytest
from PIL import Image
from redis import Redis

from api.keyring import CACHE_S
from latentq.keys import AUDIT_STREAM
from tests.conftest import API_KEY, BUCKET, api_processes, service_env

BOOTSTRAP = {"Authorization": f"Bearer {API_KEY}"}
#: The default model of this module's API processes: tiny-sd's limits, and no worker serves it, so
#: every job here waits (a worker another module left running cannot take them).
UNSERVED = {"id": "accounts-sd", "source": "/nowhere", "family": "sd1",
            "limits": {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576},
            "defaults": {"width": 64, "height": 64, "steps": 20, "sampler": "K_EULER"}}  # fmt: skip
JOB = {"prompt": "a", "width": 64, "height": 64, "steps": 1}
STABILITY_JOB = {"text_prompts": [{"text": "a"}], "width": 128, "height": 128, "steps": 10}
HOOK = {"webhook_url": "https://receiver.example/hooks"}


#: Every secret the tests of this module make or use (API keys, webhook signing secrets): none may
#: appear in the API's logs, nor in Redis but where it must (a signing secret in its settings).
SECRETS: list[str] = [API_KEY]


@pytest.fixture(scope="module")
def apis(redis_server, s3_server, tmp_path_factory) -> Iterator[list[str]]:
    env = service_env(redis_server, s3_server, api_keys=API_KEY, models=json.dumps([UNSERVED]),
                      default_model=UNSERVED["id"])  # fmt: skip
    logs = Path(tmp_path_factory.mktemp("logs"))
    with api_processes(env, logs, count=2, verbose=True) as urls:
        yield urls
    # Once the module's tests ran (keys made, used, refused, revoked): no secret in any log line...
    secrets = [*SECRETS, s3_server.secret_key]
    assert any(secret.startswith("whsec_") for secret in secrets)  # a test fetched webhook secrets
    text = "\n".join(path.read_text(errors="replace") for path in logs.glob("*.log"))
    assert '"logger": "uvicorn.access"' in text and "/v1/" in text  # the access log was on
    leaked = [secret[:6] for secret in secrets if secret in text]
    assert leaked == [], f"secrets in the API's logs: {leaked}"
    # ... nor in Redis: no job record, event stream or queued RQ job holds one.
    stored = secrets_stored(Redis.from_url(redis_server.url), secrets)
    assert stored == [], f"secrets stored in Redis: {stored}"


def admin(redis_server, *argv: str, json_out: bool = True) -> subprocess.CompletedProcess:
    """Run ``latentq-admin`` (the installed console script) against the test Redis."""
    command = [str(Path(sys.executable).parent / "latentq-admin"), *(["--json"] if json_out else []), *argv]
    env = {"LATENTQ_REDIS_URL": redis_server.url, "PATH": "/usr/bin:/bin"}
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)


def stored_under(redis: Redis, key: bytes) -> Iterator[bytes]:
    """Every value stored under ``key`` (and its fields), as bytes; zlib data decompressed, as RQ
    keeps a job's arguments so."""
    kind = redis.type(key)
    if kind == b"hash":
        values = [item for pair in redis.hgetall(key).items() for item in pair]
    elif kind == b"stream":
        values = [item for _, entry in redis.xrange(key) for pair in entry.items() for item in pair]
    elif kind == b"string":
        values = [redis.get(key) or b""]
    elif kind == b"list":
        values = redis.lrange(key, 0, -1)
    elif kind in (b"set", b"zset"):
        values = list(redis.smembers(key) if kind == b"set" else redis.zrange(key, 0, -1))
    else:
        values = []
    for value in values:
        with suppress(zlib.error):
            value = zlib.decompress(value)
        yield value


def everything_stored(redis: Redis) -> Iterator[bytes]:
    """Every key name and value under latentq's prefix, as bytes."""
    for key in redis.scan_iter("latentq:*"):
        yield key
        yield from stored_under(redis, key)


def secrets_stored(redis: Redis, secrets: list[str]) -> list[tuple[str, str]]:
    """(key, the secret's first 6 characters) for each secret of ``secrets`` stored under a latentq
    or RQ key where it must not be: an API key is kept as its digest, a webhook signing secret
    only in its account's webhook settings (it signs with it)."""
    found = []
    for key in [*redis.scan_iter("latentq:*"), *redis.scan_iter("rq:*")]:
        settings = key.startswith(b"latentq:owner:") and key.endswith(b":webhook")
        values = [key, *stored_under(redis, key)]
        for secret in secrets:
            if not (settings and secret.startswith("whsec_")) and any(secret.encode() in v for v in values):
                found.append((key.decode(), secret[:6]))
    return found


def png_bytes() -> bytes:
    """A small valid PNG: 64x64 pixels."""
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(png, format="PNG")
    return png.getvalue()


def png_base64() -> str:
    """``png_bytes()`` in base64, as our JSON routes take images."""
    return base64.b64encode(png_bytes()).decode()


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def burst(apis: list[str], method: str, path: str, count: int, **request) -> list[httpx.Response]:
    """Send ``count`` requests at once, alternating between the API processes; return the answers."""

    async def send() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as client:
            calls = [client.request(method, f"{apis[index % 2]}{path}", **request) for index in range(count)]
            return await asyncio.gather(*calls)

    return asyncio.run(send())


def new_account(apis: list[str], unlimited: bool = True) -> str:
    name = f"acct-{uuid.uuid4().hex[:8]}"
    body = {"name": name, "unlimited": unlimited}
    created = httpx.post(f"{apis[0]}/v1/admin/accounts", json=body, headers=BOOTSTRAP)
    assert created.status_code == 201, created.text
    return name


def new_key(apis: list[str], account: str, scopes: list[str], **extra) -> str:
    body = {"account": account, "scopes": scopes, **extra}
    created = httpx.post(f"{apis[0]}/v1/admin/keys", json=body, headers=BOOTSTRAP)
    assert created.status_code == 201, created.text
    SECRETS.append(created.json()["secret"])
    return SECRETS[-1]


def test_a_key_made_by_the_admin_command_works_and_its_revocation_holds_within_a_second(apis, redis_server):
    name = f"cli-{uuid.uuid4().hex[:8]}"
    account = json.loads(admin(redis_server, "accounts", "create", name).stdout)
    argv = ["keys", "create", "--account", name, "--scopes", "generate,read", "--name", "ci"]
    made = admin(redis_server, *argv, json_out=False)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]  # the secret, alone on the last line
    SECRETS.append(secret)
    assert secret.startswith("lq_") and len(secret) >= 3 + 43
    for url in apis:  # both processes know the key (and cache it)
        assert httpx.get(f"{url}/v1/jobs", headers=bearer(secret)).status_code == 200
    [key] = json.loads(admin(redis_server, "keys", "list", "--account", name).stdout)
    assert key["account"] == account["id"] and key["scopes"] == ["generate", "read"] and "secret" not in key
    assert key["last_used_at"] is not None
    revoked = admin(redis_server, "keys", "revoke", key["id"])
    assert revoked.returncode == 0 and json.loads(revoked.stdout)["revoked_at"] is not None
    time.sleep(CACHE_S + 0.05)
    for url in apis:
        refused = httpx.get(f"{url}/v1/jobs", headers=bearer(secret))
        assert refused.status_code == 401 and refused.json()["error"]["name"] == "unauthorized"
        assert httpx.post(f"{url}/v1/generate", json=JOB, headers=bearer(secret)).status_code == 401
    # The secret is nowhere in Redis; the audit trail names who did what.
    redis = Redis.from_url(redis_server.url)
    assert not any(secret.encode() in stored for stored in everything_stored(redis))
    actions = [(e[b"action"], e[b"target"]) for _, e in redis.xrange(AUDIT_STREAM)]
    assert (b"keys.revoke", key["id"].encode()) in actions
    assert admin(redis_server, "keys", "revoke", "key_nope").returncode == 2  # a clear refusal, no trace


def test_scopes_hold_on_every_kind_of_route(apis):
    account = new_account(apis)
    reader = bearer(new_key(apis, account, ["read"]))
    maker = bearer(new_key(apis, account, ["generate"]))
    denied = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers=reader)
    assert denied.status_code == 403 and denied.json()["error"]["name"] == "permission_denied"
    assert "generate" in denied.json()["error"]["message"]
    job_id = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers=maker).json()["id"]
    assert httpx.get(f"{apis[1]}/v1/jobs/{job_id}", headers=reader).status_code == 200
    assert httpx.get(f"{apis[1]}/v1/jobs/{job_id}", headers=maker).status_code == 403
    assert httpx.post(f"{apis[0]}/v1/jobs/{job_id}/cancel", headers=reader).status_code == 403
    # Webhook settings hold the secret that signs the account's webhooks: reading them is no read.
    assert httpx.get(f"{apis[0]}/v1/webhook", headers=reader).status_code == 403
    SECRETS.append(httpx.get(f"{apis[0]}/v1/webhook", headers=maker).json()["secret"])
    assert SECRETS[-1].startswith("whsec_")
    for path in ("/v1/admin/accounts", "/v1/admin/keys", "/v1/admin/audit"):
        assert httpx.get(f"{apis[0]}{path}", headers=reader).status_code == 403
    assert httpx.post(f"{apis[0]}/v1/admin/credits", json={"account": account, "amount": 5}, headers=maker
                      ).status_code == 403  # fmt: skip


def test_an_accounts_keys_share_its_jobs_and_no_other_account_sees_them(apis):
    first, second = new_account(apis), new_account(apis)
    one, two = (bearer(new_key(apis, first, ["generate", "read"])) for _ in range(2))
    stranger = bearer(new_key(apis, second, ["generate", "read"]))
    job_id = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers=one).json()["id"]
    assert httpx.get(f"{apis[1]}/v1/jobs/{job_id}", headers=two).status_code == 200
    assert [job["id"] for job in httpx.get(f"{apis[1]}/v1/jobs", headers=two).json()["data"]] == [job_id]
    routes = [("GET", f"/v1/jobs/{job_id}"), ("GET", f"/v1/jobs/{job_id}/events"),
              ("GET", f"/v1/jobs/{job_id}/preview"), ("POST", f"/v1/jobs/{job_id}/cancel")]  # fmt: skip
    for method, path in routes:
        answer = httpx.request(method, f"{apis[0]}{path}", headers=stranger)
        assert answer.status_code == 404 and answer.json()["error"]["name"] == "not_found", path
    assert httpx.get(f"{apis[0]}/v1/jobs", headers=stranger).json()["data"] == []


def test_an_expired_key_is_refused(apis):
    secret = new_key(apis, new_account(apis), ["read"], expires_in_s=0.5)
    assert httpx.get(f"{apis[0]}/v1/jobs", headers=bearer(secret)).status_code == 200
    time.sleep(0.5 + CACHE_S + 0.05)
    assert httpx.get(f"{apis[0]}/v1/jobs", headers=bearer(secret)).status_code == 401


def test_the_admin_api_names_what_is_wrong(apis):
    account = new_account(apis)
    bad = httpx.post(
        f"{apis[0]}/v1/admin/keys", json={"account": account, "scopes": ["root"]}, headers=BOOTSTRAP
    )
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "scopes"
    unknown = httpx.post(f"{apis[0]}/v1/admin/keys", json={"account": "nobody-x", "scopes": ["read"]},
                         headers=BOOTSTRAP)  # fmt: skip
    assert unknown.status_code == 404 and unknown.json()["error"]["name"] == "not_found"
    again = httpx.post(f"{apis[0]}/v1/admin/accounts", json={"name": account}, headers=BOOTSTRAP)
    assert again.status_code == 400 and again.json()["error"]["field"] == "name"
    extra = httpx.post(f"{apis[0]}/v1/admin/credits", json={"account": account, "amount": 1, "x": 1},
                       headers=BOOTSTRAP)  # fmt: skip
    assert extra.status_code == 400 and extra.json()["error"]["name"] == "unknown_field"
    assert httpx.delete(f"{apis[0]}/v1/admin/keys/key_nope", headers=BOOTSTRAP).status_code == 404


def test_credits_granted_show_in_the_account_its_ledger_and_stabilitys_balance(apis):
    account = new_account(apis, unlimited=False)
    key = bearer(new_key(apis, account, ["read"]))
    granted = httpx.post(f"{apis[0]}/v1/admin/credits", json={"account": account, "amount": 12.5},
                         headers=BOOTSTRAP)  # fmt: skip
    assert granted.status_code == 200 and granted.json()["credits"] == 12.5
    mine = httpx.get(f"{apis[1]}/v1/account", headers=key).json()
    assert mine["name"] == account and mine["credits"] == 12.5 and mine["key"]["scopes"] == ["read"]
    [entry] = httpx.get(f"{apis[1]}/v1/account/ledger", headers=key).json()["entries"]
    assert (entry["amount"], entry["balance"], entry["reason"]) == (12.5, 12.5, "grant")
    assert httpx.get(f"{apis[1]}/v1/user/balance", headers=key).json() == {"credits": 12.5}


def test_a_keys_rate_limit_holds_across_two_api_processes(apis):
    account = new_account(apis)
    # 150 requests, then one more per 1000 s / 150 = 6.7 s: a burst of 300 in a second or two
    # admits 150 (151 if it straddles an emission), however it is spread over the processes.
    limits = {"rate_limit": 150, "rate_period_s": 1000}
    limited = httpx.patch(f"{apis[0]}/v1/admin/accounts/{account}", json=limits, headers=BOOTSTRAP)
    assert limited.status_code == 200 and limited.json()["limits"]["rate_limit"] == 150
    key = bearer(new_key(apis, account, ["generate", "read"]))
    time.sleep(CACHE_S + 0.05)  # the account's limits as every process caches them

    answers = burst(apis, "GET", "/v1/account", 300, headers=key)
    admitted = [answer for answer in answers if answer.status_code == 200]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(admitted) + len(refused) == 300 and 150 <= len(admitted) <= 151
    assert {answer.url.port for answer in admitted} == {httpx.URL(url).port for url in apis}
    sample = refused[0]
    assert sample.json()["error"]["name"] == "rate_limited" and int(sample.headers["retry-after"]) >= 1
    assert sample.headers["ratelimit-remaining"] == "0" and sample.headers["ratelimit-limit"] == "150"
    assert all(answer.headers["ratelimit-limit"] == "150" for answer in admitted)
    assert min(int(answer.headers["ratelimit-remaining"]) for answer in admitted) == 0
    # Stability's routes answer the same refusal in their own shape.
    stability = httpx.post(f"{apis[1]}/v1/generation/tiny-sd/text-to-image", json=STABILITY_JOB, headers=key)
    assert stability.status_code == 429 and stability.json()["name"] == "rate_limited", stability.text


def test_bootstrap_keys_are_not_rate_limited(apis):
    answer = httpx.get(f"{apis[0]}/v1/account", headers=BOOTSTRAP)
    assert answer.status_code == 200 and "ratelimit-limit" not in answer.headers


def test_an_accounts_job_cap_holds_under_concurrent_submits_and_frees_as_jobs_end(apis):
    account = new_account(apis)
    assert httpx.patch(f"{apis[0]}/v1/admin/accounts/{account}", json={"max_jobs": 10},
                       headers=BOOTSTRAP).status_code == 200  # fmt: skip
    key = bearer(new_key(apis, account, ["generate", "read"]))
    time.sleep(CACHE_S + 0.05)

    answers = burst(apis, "POST", "/v1/generate", 50, json=JOB, headers=key)
    accepted = [answer for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(accepted) == 10 and len(refused) == 40
    assert refused[0].json()["error"]["name"] == "too_many_jobs" and "retry-after" in refused[0].headers
    # Bad input costs nothing: it is refused for what it is, not for the cap.
    assert httpx.post(f"{apis[0]}/v1/generate", json={**JOB, "steps": 0}, headers=key).status_code == 400
    canceled = httpx.post(f"{apis[0]}/v1/jobs/{accepted[0].json()['id']}/cancel", headers=key)
    assert canceled.json()["status"] == "canceled"
    assert httpx.post(f"{apis[1]}/v1/generate", json=JOB, headers=key).status_code == 202  # room again
    assert httpx.post(f"{apis[1]}/v1/generate", json=JOB, headers=key).status_code == 429


def test_a_full_queue_refuses_every_account_with_a_retry_time(redis_server, s3_server, tmp_path):
    from latentq.fair_share import pending_key
    from latentq.keys import queue_name, rq_queue_key

    # A model no worker serves: a worker an earlier test left running cannot drain its queue.
    model = {**UNSERVED, "id": f"unserved-{uuid.uuid4().hex[:8]}"}
    job = {**JOB, "model": model["id"]}
    redis = Redis.from_url(redis_server.url)
    queue = queue_name(model["id"])
    depth = redis.llen(rq_queue_key(queue)) + int(redis.get(pending_key(queue)) or 0)  # none: it is new
    env = service_env(redis_server, s3_server, api_keys=API_KEY, max_queue_depth=str(depth + 1),
                      models=json.dumps([model]))  # fmt: skip
    with api_processes(env, tmp_path) as [url]:
        assert httpx.post(f"{url}/v1/generate", json=job, headers=BOOTSTRAP).status_code == 202
        full = httpx.post(f"{url}/v1/generate", json=job, headers=BOOTSTRAP)
        assert full.status_code == 503 and full.json()["error"]["name"] == "queue_full"
        assert 1 <= int(full.headers["retry-after"]) <= 60


def test_credits_are_reserved_atomically_and_refunded_when_a_job_is_canceled(apis):
    account = new_account(apis, unlimited=False)
    key = bearer(new_key(apis, account, ["generate", "read"]))
    quoted = httpx.post(f"{apis[0]}/v1/quote", json=JOB, headers=key)
    assert quoted.status_code == 200 and quoted.json()["credits"] == 0
    cost = quoted.json()["cost"]  # 64x64, 1 step: 1 x 4096/262144 x 1/30 = 0.001 (the floor)
    assert cost == 0.001
    bigger = {**JOB, "width": 256, "height": 256, "steps": 30, "samples": 4}
    big = httpx.post(f"{apis[0]}/v1/quote", json=bigger, headers=key).json()
    assert big["cost"] == 1.0  # the rule: 1 credit per 512x512 image of 30 steps, by pixels and samples
    assert httpx.post(f"{apis[0]}/v1/quote", json={**JOB, "steps": 0}, headers=key).status_code == 400
    httpx.post(
        f"{apis[0]}/v1/admin/credits", json={"account": account, "amount": 10 * cost}, headers=BOOTSTRAP
    )

    answers = burst(apis, "POST", "/v1/generate", 50, json=JOB, headers=key)
    accepted = [answer for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code == 402]
    assert len(accepted) == 10 and len(refused) == 40  # exactly what the balance covers
    error = refused[0].json()["error"]
    assert error["name"] == "insufficient_balance" and (error["cost"], error["credits"]) == (cost, 0)
    assert httpx.get(f"{apis[1]}/v1/account", headers=key).json()["credits"] == 0
    job_id = accepted[0].json()["id"]
    assert httpx.post(f"{apis[1]}/v1/jobs/{job_id}/cancel", headers=key).json()["status"] == "canceled"
    assert httpx.get(f"{apis[0]}/v1/account", headers=key).json()["credits"] == cost  # refunded whole
    entries = httpx.get(f"{apis[0]}/v1/account/ledger", headers=key).json()["entries"]
    reasons = [entry["reason"] for entry in entries]
    assert reasons.count("charge") == 10 and reasons.count("grant") == 1
    assert entries[0]["reason"] == "refund" and entries[0]["job"] == job_id and entries[0]["balance"] == cost


#: A route of the matrix: method, path, the scope it needs, and the request's other arguments (a
#: small valid body where it takes one, so a refusal is never just the body's).
Route = tuple[str, str, str, dict[str, Any]]


def job_routes(job_id: str) -> list[Route]:
    """The routes of one job."""
    return [("GET", f"/v1/jobs/{job_id}", "read", {}), ("GET", f"/v1/jobs/{job_id}/events", "read", {}),
            ("GET", f"/v1/jobs/{job_id}/preview", "read", {}),
            ("POST", f"/v1/jobs/{job_id}/cancel", "generate", {}),
            ("DELETE", f"/v1/jobs/{job_id}", "generate", {})]  # fmt: skip


def webhook_routes() -> list[Route]:
    """The routes of the caller's account's webhook settings: all need ``generate``, reading too."""
    return [("GET", "/v1/webhook", "generate", {}), ("PUT", "/v1/webhook", "generate", {"json": HOOK}),
            ("DELETE", "/v1/webhook", "generate", {}), ("POST", "/v1/webhook/rotate-secret", "generate", {}),
            ("DELETE", "/v1/webhook/disabled", "generate", {})]  # fmt: skip


def own_routes() -> list[Route]:
    """The routes that read or submit to the caller's own account."""
    init, prompt = {"init_image": ("init.png", png_bytes(), "image/png")}, {"text_prompts[0][text]": "a"}
    stability = "/v1/generation/tiny-sd"
    return [("GET", "/v1/jobs", "read", {}), ("GET", "/v1/account", "read", {}),
            ("GET", "/v1/account/ledger", "read", {}), ("GET", "/v1/user/account", "read", {}),
            ("GET", "/v1/user/balance", "read", {}), *webhook_routes(),
            ("POST", "/v1/generate", "generate", {"json": JOB}),
            ("POST", "/v1/quote", "generate", {"json": JOB}),
            ("POST", "/v1/upscale", "generate", {"json": {"model": "lanczos", "image": png_base64()}}),
            ("POST", f"{stability}/text-to-image", "generate", {"json": STABILITY_JOB}),
            ("POST", f"{stability}/image-to-image", "generate", {"data": prompt, "files": init}),
            ("POST", f"{stability}/image-to-image/masking", "generate",
             {"data": {**prompt, "mask_source": "INIT_IMAGE_ALPHA"}, "files": init}),
            ("POST", "/v1/generation/lanczos/image-to-image/upscale", "generate",
             {"files": {"image": init["init_image"]}}),
            ("POST", "/v1/images/generations", "generate", {"json": {"prompt": "a", "size": "64x64"}}),
            ("POST", "/v1/images/edits", "generate",
             {"data": {"prompt": "a"}, "files": {"image": init["init_image"]}}),
            ("POST", "/v1/images/variations", "generate", {"files": {"image": init["init_image"]}}),
            ("GET", "/v1/models/tiny-sd", "read", {})]  # fmt: skip


def admin_routes(account: str, key_id: str) -> list[Route]:
    """The operator's routes, aimed at ``account`` and its key ``key_id`` where they take one."""
    return [("GET", "/v1/admin/accounts", "admin", {}),
            ("POST", "/v1/admin/accounts", "admin", {"json": {"name": f"never-{uuid.uuid4().hex[:8]}"}}),
            ("GET", f"/v1/admin/accounts/{account}", "admin", {}),
            ("PATCH", f"/v1/admin/accounts/{account}", "admin", {"json": {"max_jobs": 1}}),
            ("GET", f"/v1/admin/accounts/{account}/ledger", "admin", {}),
            ("GET", "/v1/admin/keys", "admin", {}),
            ("POST", "/v1/admin/keys", "admin", {"json": {"account": account, "scopes": ["read"]}}),
            ("DELETE", f"/v1/admin/keys/{key_id}", "admin", {}),
            ("POST", "/v1/admin/credits", "admin", {"json": {"account": account, "amount": 5}}),
            ("GET", "/v1/admin/audit", "admin", {})]  # fmt: skip


def error_name(answer: httpx.Response) -> str | None:
    """The error name ``answer`` carries, in our shape, Stability's or OpenAI's (its ``code``);
    None if it carries none."""
    try:
        body = answer.json()
    except ValueError:
        return None
    if not isinstance(body, dict):
        return None
    error = body.get("error")
    return (error.get("name") or error.get("code")) if isinstance(error, dict) else body.get("name")


def mismatches(url: str, routes: list[Route], who: str, headers: dict[str, str], expected: tuple) -> list:
    """Send each of ``routes`` to ``url`` with ``headers``; return those whose (status, error name)
    is not ``expected``, with what they answered."""
    found = []
    for method, path, _, request in routes:
        answer = httpx.request(method, f"{url}{path}", headers=headers, timeout=10, **request)
        if (answer.status_code, error_name(answer)) != expected:
            found.append((who, method, path, answer.status_code, error_name(answer)))
    return found


def account_state(apis: list[str], account: str) -> tuple:
    """What the operator sees of ``account``: itself, its ledger, its keys, and every account's name."""
    get = functools.partial(httpx.get, headers=BOOTSTRAP)
    keys = get(f"{apis[0]}/v1/admin/keys", params={"account": account}).json()["keys"]
    everyone = get(f"{apis[0]}/v1/admin/accounts").json()["accounts"]
    return (get(f"{apis[0]}/v1/admin/accounts/{account}").json(),
            get(f"{apis[0]}/v1/admin/accounts/{account}/ledger").json()["entries"],
            sorted(key["id"] for key in keys), sorted(each["name"] for each in everyone))  # fmt: skip


def test_bola_matrix_nothing_of_an_account_reaches_another_or_a_bad_key(apis, redis_server):
    victim_account, other_account = new_account(apis), new_account(apis)
    victim = bearer(new_key(apis, victim_account, ["generate", "read"]))
    victim_key_id = httpx.get(f"{apis[0]}/v1/account", headers=victim).json()["key"]["id"]
    stranger = bearer(new_key(apis, other_account, ["generate", "read"]))
    revoked_secret = new_key(apis, victim_account, ["generate", "read"])
    listed = json.loads(admin(redis_server, "keys", "list", "--account", victim_account).stdout)
    [revoked_id] = [key["id"] for key in listed if key["prefix"] == revoked_secret[:7]]
    admin(redis_server, "keys", "revoke", revoked_id)
    # Keys of the victim's own account, each lacking some scope.
    lacking = {
        scope: bearer(new_key(apis, victim_account, [scope])) for scope in ("read", "generate", "admin")
    }
    job_id = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers=victim).json()["id"]
    assert httpx.put(f"{apis[0]}/v1/webhook", json=HOOK, headers=victim).status_code == 200
    victim_secret = httpx.get(f"{apis[0]}/v1/webhook", headers=victim).json()["secret"]
    SECRETS.append(victim_secret)
    SECRETS.append(httpx.get(f"{apis[0]}/v1/webhook", headers=stranger).json()["secret"])
    hooked = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers=victim).json()["id"]  # copies the webhook
    time.sleep(CACHE_S + 0.05)
    before = account_state(apis, victim_account)
    routes = job_routes(job_id) + own_routes() + admin_routes(victim_account, victim_key_id)
    found = []
    for who, headers in (("no key", {}), ("revoked key", bearer(revoked_secret)),
                         ("unknown key", bearer("lq_" + "x" * 43))):  # fmt: skip
        found += mismatches(apis[1], routes, who, headers, (401, "unauthorized"))
    for scope, headers in lacking.items():
        without = [route for route in routes if route[2] != scope]
        found += mismatches(apis[1], without, f"only {scope}", headers, (403, "permission_denied"))
    # Another account's full key: the victim's job is as if it did not exist, the operator's routes
    # are not for a tenant, and webhook settings are its own.
    found += mismatches(apis[1], job_routes(job_id), "other account", stranger, (404, "not_found"))
    found += mismatches(apis[1], admin_routes(victim_account, victim_key_id), "other account", stranger,
                        (403, "permission_denied"))  # fmt: skip
    found += mismatches(apis[1], webhook_routes(), "other account", stranger, (200, None))
    assert found == []
    # Nothing the refused requests asked for happened; the stranger's settings were its own.
    assert account_state(apis, victim_account) == before
    for each in (job_id, hooked):
        assert httpx.get(f"{apis[1]}/v1/jobs/{each}", headers=victim).json()["status"] == "queued"
    mine = httpx.get(f"{apis[1]}/v1/webhook", headers=victim).json()
    assert (mine["webhook_url"], mine["secret"]) == (HOOK["webhook_url"], victim_secret)
    seen = httpx.get(f"{apis[1]}/v1/webhook", headers=stranger).json()  # rotated, set, then deleted
    SECRETS.append(seen["secret"])
    assert seen["webhook_url"] is None and seen["secret"] not in SECRETS[:-1]
    assert httpx.get(f"{apis[1]}/v1/jobs", headers=stranger).json()["data"] == []
    assert httpx.get(f"{apis[1]}/v1/account", headers=stranger).json()["name"] == other_account


def test_a_managed_admin_key_runs_the_admin_api_and_nothing_else(apis):
    home = new_account(apis)
    made = httpx.post(
        f"{apis[0]}/v1/admin/keys", json={"account": home, "scopes": ["admin"]}, headers=BOOTSTRAP
    )
    assert made.status_code == 201, made.text
    SECRETS.append(made.json()["secret"])
    operator, operator_id = bearer(made.json()["secret"]), made.json()["id"]
    created = httpx.post(f"{apis[1]}/v1/admin/accounts", json={"name": f"cust-{uuid.uuid4().hex[:8]}"},
                         headers=operator)  # fmt: skip
    assert created.status_code == 201, created.text
    customer = created.json()["id"]
    granted = httpx.post(
        f"{apis[1]}/v1/admin/credits", json={"account": customer, "amount": 3}, headers=operator
    )
    assert granted.status_code == 200 and granted.json()["credits"] == 3
    key = httpx.post(
        f"{apis[1]}/v1/admin/keys", json={"account": customer, "scopes": ["read"]}, headers=operator
    )
    assert key.status_code == 201
    SECRETS.append(key.json()["secret"])
    assert httpx.get(f"{apis[0]}/v1/account", headers=bearer(key.json()["secret"])).json()["credits"] == 3
    listed = httpx.get(f"{apis[1]}/v1/admin/accounts", headers=operator).json()["accounts"]
    assert customer in [account["id"] for account in listed]
    audit = httpx.get(f"{apis[1]}/v1/admin/audit", headers=operator).json()["entries"]
    done = [(entry["action"], entry["target"]) for entry in audit if entry["actor"] == operator_id]
    assert done == [
        ("keys.create", key.json()["id"]),
        ("credits.grant", customer),
        ("accounts.create", customer),
    ]
    # It is no tenant's key: it neither submits nor reads jobs, its own account's included.
    job_id = httpx.post(f"{apis[0]}/v1/generate", json=JOB,
                        headers=bearer(new_key(apis, home, ["generate", "read"]))).json()["id"]  # fmt: skip
    tenant_routes = [("POST", "/v1/generate", {"json": JOB}), ("GET", "/v1/jobs", {}),
                     ("GET", f"/v1/jobs/{job_id}", {}), ("GET", "/v1/webhook", {}),
                     ("POST", "/v1/generation/tiny-sd/text-to-image", {"json": STABILITY_JOB})]  # fmt: skip
    for method, path, request in tenant_routes:
        answer = httpx.request(method, f"{apis[0]}{path}", headers=operator, **request)
        assert (answer.status_code, error_name(answer)) == (403, "permission_denied"), path


def test_an_idempotency_key_is_per_account_and_shared_by_its_keys(apis):
    first, second = new_account(apis), new_account(apis)
    one, two = (bearer(new_key(apis, first, ["generate", "read"])) for _ in range(2))
    other = bearer(new_key(apis, second, ["generate", "read"]))
    retry = {"Idempotency-Key": f"order-{uuid.uuid4().hex[:8]}"}
    made = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers={**one, **retry})
    # The account's other key, on the other API process: the same job.
    again = httpx.post(f"{apis[1]}/v1/generate", json=JOB, headers={**two, **retry})
    theirs = httpx.post(f"{apis[1]}/v1/generate", json=JOB, headers={**other, **retry})
    assert (made.status_code, again.status_code, theirs.status_code) == (202, 200, 202)
    assert again.json()["id"] == made.json()["id"] and again.headers["location"] == made.headers["location"]
    mine, yours = made.json()["id"], theirs.json()["id"]
    assert mine != yours
    assert httpx.get(f"{apis[0]}/v1/jobs/{yours}", headers=one).status_code == 404
    assert httpx.get(f"{apis[0]}/v1/jobs/{mine}", headers=other).status_code == 404
    assert [job["id"] for job in httpx.get(f"{apis[0]}/v1/jobs", headers=two).json()["data"]] == [mine]
    assert [job["id"] for job in httpx.get(f"{apis[0]}/v1/jobs", headers=other).json()["data"]] == [yours]


def test_submits_count_against_the_rate_in_their_own_script_call_bad_input_too(apis):
    account = new_account(apis)
    limits = {"rate_limit": 20, "rate_period_s": 1000, "max_jobs": 1000}
    assert (
        httpx.patch(f"{apis[0]}/v1/admin/accounts/{account}", json=limits, headers=BOOTSTRAP).status_code
        == 200
    )
    key = bearer(new_key(apis, account, ["generate", "read"]))
    time.sleep(CACHE_S + 0.05)
    bad = httpx.post(
        f"{apis[0]}/v1/generate", json={**JOB, "steps": 0}, headers=key
    )  # refused for what it is
    assert bad.status_code == 400 and bad.headers["ratelimit-remaining"] == "19"  # ... and counted
    answers = burst(apis, "POST", "/v1/generate", 40, json=JOB, headers=key)
    accepted = [answer for answer in answers if answer.status_code == 202]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(accepted) == 19 and len(refused) == 21
    assert (
        refused[0].json()["error"]["name"] == "rate_limited" and int(refused[0].headers["retry-after"]) >= 1
    )
    assert sorted(int(answer.headers["ratelimit-remaining"]) for answer in accepted) == list(range(19))


def test_odd_input_to_the_account_routes_and_command_is_a_clear_refusal(apis, redis_server):
    account = new_account(apis, unlimited=False)
    key = bearer(new_key(apis, account, ["read"]))
    for before in ("0-0", "99999999999999999999-0"):
        answer = httpx.get(f"{apis[0]}/v1/account/ledger", params={"before": before}, headers=key)
        assert answer.status_code == 400 and answer.json()["error"]["field"] == "before", answer.text
    account_id = httpx.get(f"{apis[0]}/v1/account", headers=key).json()["id"]
    for name in (f"{account_id}:ledger", f"{account_id}:keys"):  # keys under the account are no account
        assert httpx.get(f"{apis[0]}/v1/admin/accounts/{name}", headers=BOOTSTRAP).status_code == 404
    for argv in (
        ["accounts", "limits", account, "--rate-period-s", "inf"],
        ["credits", "grant", account, "nan"],
    ):
        refused = admin(redis_server, *argv)
        assert refused.returncode == 2 and "finite" in refused.stderr and "Traceback" not in refused.stderr
    mine = httpx.get(
        f"{apis[0]}/v1/account", headers=BOOTSTRAP
    ).json()  # a bootstrap key: nothing of its digest
    digest = hashlib.sha256(API_KEY.encode()).hexdigest()
    assert digest[:8] not in mine["id"] and digest[:8] not in mine["key"]["id"]


def test_an_accounts_objects_lie_in_a_folder_named_by_its_public_id(apis, s3_server):
    png = io.BytesIO()
    Image.new("RGB", (64, 64), "green").save(png, format="PNG")
    body = {"prompt": "a", "steps": 2, "init_image": base64.b64encode(png.getvalue()).decode()}
    managed = bearer(new_key(apis, new_account(apis), ["generate", "read"]))
    s3 = s3_server.client()
    for key in (managed, BOOTSTRAP):
        public_id = httpx.get(f"{apis[0]}/v1/account", headers=key).json()["id"]
        job_id = httpx.post(f"{apis[0]}/v1/generate", json=body, headers=key).json()["id"]
        stored = httpx.get(f"{apis[1]}/v1/jobs/{job_id}", headers=key).json()["request"]["init_image_key"]
        assert stored == f"{public_id}/{job_id}/inputs/init.png"
        assert s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{public_id}/{job_id}/")["KeyCount"] == 1
    # A bootstrap account's folder is its name, never a digest of its key.
    assert public_id.startswith("bootstrap-")
    assert hashlib.sha256(API_KEY.encode()).hexdigest()[:8] not in stored


def test_an_open_event_stream_ends_once_its_key_is_revoked(apis):
    account = new_account(apis)
    body = {"account": account, "scopes": ["generate", "read"]}
    created = httpx.post(f"{apis[0]}/v1/admin/keys", json=body, headers=BOOTSTRAP).json()
    SECRETS.append(created["secret"])
    key = bearer(created["secret"])
    job_id = httpx.post(f"{apis[0]}/v1/generate", json=JOB, headers=key).json()["id"]  # no worker: it waits
    with httpx.stream("GET", f"{apis[1]}/v1/jobs/{job_id}/events", headers=key, timeout=30) as stream:
        lines = stream.iter_lines()
        events = []
        while "event: queued" not in events:  # the stream is open and has sent what there is
            events.append(next(lines))
        assert httpx.delete(f"{apis[0]}/v1/admin/keys/{created['id']}", headers=BOOTSTRAP).status_code == 200
        revoked_at = time.monotonic()
        events += [line for line in lines if line.startswith(("event:", "data:"))]  # until it ends
    assert time.monotonic() - revoked_at < 10
    assert events[-2] == "event: error"
    assert json.loads(events[-1].removeprefix("data: "))["error"]["name"] == "unauthorized"
    assert [event for event in events if event.startswith("event:")] == ["event: queued", "event: error"]
