"""The request guard, against a real API process: a body is never read before the API key is
checked, and never held past its limit, whether it announces its length or streams in chunks."""

from __future__ import annotations

import select
import socket
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.keyring import CACHE_S
from api.request_guard import MAX_BODY_BYTES, MAX_JSON_BYTES
from latentq_dev.devstack import Process, free_port, wait_until
from tests.conftest import API_KEY, service_env

CHUNK = b"x" * (1 << 20)
BOOTSTRAP = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def api_process(redis_server, s3_server, tmp_path_factory) -> Iterator[tuple[Process, int]]:
    port = free_port()
    env = service_env(redis_server, s3_server, api_keys=API_KEY)
    argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
            "--no-access-log", "--log-level", "warning"]  # fmt: skip
    process = Process.start("api", argv, Path(tmp_path_factory.mktemp("logs")) / "api.log", env)
    try:
        wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200, 30, "the API", process
        )
        yield process, port
    finally:
        process.stop()


def peak_rss_mib(process: Process) -> float:
    """The process's peak resident memory (``VmHWM``), MiB."""
    for line in Path(f"/proc/{process.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmHWM")


def send_chunked(port: int, headers: dict[str, str], megabytes: int) -> tuple[int, int]:
    """POST a chunked body of up to ``megabytes`` MiB to /v1/generate, stopping as soon as the
    server answers (or stops reading); return the answer's status and the MiB sent by then."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "POST /v1/generate HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        head += "Content-Type: application/json\r\n" + "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall((head + "\r\n").encode())
        sent = 0
        sock.settimeout(5)
        deadline = time.monotonic() + 60
        try:
            while sent < megabytes and time.monotonic() < deadline:
                sock.sendall(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                sent += 1
                if select.select([sock], [], [], 0)[0]:
                    break  # answered before the body ended
            else:
                sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the server answered and stopped reading: what is under test
        sock.settimeout(30)
        answer = b""
        try:
            while b"\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
    return int(answer.split(b" ", 2)[1]) if answer else 0, sent


def test_no_key_is_refused_before_the_body_is_read(api_process):
    process, port = api_process
    url = f"http://127.0.0.1:{port}/v1/generate"
    # An unknown field is not reported to a caller without a key: 401 comes first.
    response = httpx.post(url, json={"prompt": "a", "no_such_field": 1})
    assert response.status_code == 401 and response.json()["error"]["name"] == "unauthorized"
    before = peak_rss_mib(process)
    status, sent = send_chunked(port, {}, megabytes=500)
    assert status == 401 and sent < 10  # answered at the first bytes
    assert peak_rss_mib(process) - before < 50, (before, peak_rss_mib(process), sent)


def test_a_body_over_the_limit_is_cut_off_while_it_streams(api_process):
    process, port = api_process
    before = peak_rss_mib(process)
    status, sent = send_chunked(port, {"Authorization": f"Bearer {API_KEY}"}, megabytes=300)
    assert status == 413
    assert sent < 100  # answered soon after the limit (about 28 MiB), not at the end of the body
    assert peak_rss_mib(process) - before < 3 * MAX_BODY_BYTES / 2**20, (before, peak_rss_mib(process))


def test_an_announced_length_over_the_limit_is_refused_at_once(api_process):
    _, port = api_process
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(
            f"POST /v1/generate HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {500 * 2**20}\r\n\r\n{{".encode()
        )
        answer = b""  # no more body is sent: the answer must not wait for it
        while b"payload_too_large" not in answer:
            data = sock.recv(4096)  # the head and the body may come in separate reads
            if not data:
                break
            answer += data
    assert answer.startswith(b"HTTP/1.1 413") and b"payload_too_large" in answer


def managed_key(port: int, scopes: list[str], **limits: float) -> dict[str, str]:
    """Make an account (with ``limits``) and a key of it with ``scopes``; return its header."""
    base, name = f"http://127.0.0.1:{port}/v1/admin", f"guard-{uuid.uuid4().hex[:8]}"
    assert httpx.post(
        f"{base}/accounts", json={"name": name, "unlimited": True}, headers=BOOTSTRAP
    ).is_success
    if limits:
        assert httpx.patch(f"{base}/accounts/{name}", json=limits, headers=BOOTSTRAP).is_success
    created = httpx.post(f"{base}/keys", json={"account": name, "scopes": scopes}, headers=BOOTSTRAP)
    return {"Authorization": f"Bearer {created.json()['secret']}"}


def answer_before_body(port: int, path: str, headers: dict[str, str]) -> bytes:
    """POST to ``path`` announcing a 20 MB body but sending none; return the answer (which must
    not wait for the body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"{head}Content-Length: {20 * 2**20}\r\n\r\n{{".encode())
        answer = b""
        while b"}" not in answer.partition(b"\r\n\r\n")[2]:  # the head and the error's JSON
            data = sock.recv(4096)
            if not data:
                break
            answer += data
    return answer


def test_a_key_without_the_routes_scope_is_refused_before_the_body_is_read(api_process):
    _, port = api_process
    reader = managed_key(port, ["read"])
    for path in ("/v1/generate", "/v1/generation/tiny-sd/text-to-image", "/v1/webhook/rotate-secret"):
        answer = answer_before_body(port, path, reader)
        assert answer.startswith(b"HTTP/1.1 403") and b"permission_denied" in answer, (path, answer)
    maker = managed_key(port, ["generate"])
    answer = answer_before_body(port, "/v1/admin/credits", maker)
    assert answer.startswith(b"HTTP/1.1 403") and b"admin" in answer


def test_a_submit_of_a_key_over_its_rate_is_refused_before_its_body_is_read(api_process):
    _, port = api_process
    key = managed_key(port, ["generate", "read"], rate_limit=2, rate_period_s=1000)
    time.sleep(CACHE_S + 0.05)  # the account's limits as the process caches them
    url = f"http://127.0.0.1:{port}/v1/generate"
    statuses = [httpx.post(url, json={"prompt": 1}, headers=key).status_code for _ in range(4)]
    # Bad input counts against the rate: a submit's check is made after its body is read (in the
    # submit's script, or after its answer when it has none), so the third is the one found over
    # it, and from then on the process refuses the key's submits at once.
    assert statuses == [400, 400, 400, 429]
    answer = answer_before_body(port, "/v1/generate", key)
    assert answer.startswith(b"HTTP/1.1 429") and b"rate_limited" in answer
    assert b"retry-after: " in answer.lower() and b"ratelimit-remaining: 0" in answer.lower()


def test_routes_without_images_take_bodies_up_to_a_megabyte(api_process):
    _, port = api_process
    base = f"http://127.0.0.1:{port}"
    big = {"account": "x" * (MAX_JSON_BYTES + 1), "amount": 1}
    refused = httpx.post(f"{base}/v1/admin/credits", json=big, headers=BOOTSTRAP)
    assert refused.status_code == 413 and str(MAX_JSON_BYTES) in refused.json()["error"]["message"]
    hook = {"webhook_url": "https://x.example/" + "a" * MAX_JSON_BYTES}
    assert httpx.put(f"{base}/v1/webhook", json=hook, headers=BOOTSTRAP).status_code == 413
    # A generation takes images: the same body is read, and refused for what it says.
    taken = httpx.post(f"{base}/v1/generate", json={"prompt": "a" * MAX_JSON_BYTES}, headers=BOOTSTRAP)
    assert taken.status_code == 400 and taken.json()["error"]["name"] == "invalid_prompt", taken.text
