"""The request guard, against a real API process: a body is never read before the API key is
checked, and never held past its limit, whether it announces its length or streams in chunks."""

from __future__ import annotations

import select
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from api.request_guard import MAX_BODY_BYTES
from latentq_dev.devstack import Process, free_port, wait_until
from tests.conftest import API_KEY, service_env

CHUNK = b"x" * (1 << 20)


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
