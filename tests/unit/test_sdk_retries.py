"""The client's retries, against a scripted HTTP server on loopback: 429 and 503 are retried after
``Retry-After`` (or a backoff), with the submit's one ``Idempotency-Key``; other errors are not."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latentq_client import (
    APIConnectionError,
    AsyncClient,
    BadRequestError,
    Client,
    RateLimitError,
    RetryPolicy,
    ServiceUnavailableError,
)
from latentq_dev.devstack import free_port

JOB = {"id": "job-1", "status": "queued", "images": [], "error": None}
QUICK = RetryPolicy(max_attempts=3, backoff_s=0.01)


def error_body(name: str, **extra: str) -> dict:
    return {"error": {"name": name, "message": f"{name} happened", **extra}}


class ScriptedServer:
    """Answers each request with the next ``(status, headers, body)`` of its script (the last
    repeats) and records what it received and when."""

    def __init__(self, script: list[tuple[int, dict[str, str], dict]]) -> None:
        self.script = script
        self.received: list[dict] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                server.received.append({"headers": dict(self.headers), "at": time.monotonic()})
                status, headers, body = server.script[min(len(server.received), len(server.script)) - 1]
                payload = json.dumps(body).encode()
                self.send_response(status)
                for name, value in {**headers, "Content-Type": "application/json"}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()

    def keys(self) -> list[str]:
        return [request["headers"]["Idempotency-Key"] for request in self.received]


@pytest.fixture
def serve_script() -> Iterator:
    servers: list[ScriptedServer] = []

    def start(*script: tuple[int, dict[str, str], dict]) -> ScriptedServer:
        servers.append(ScriptedServer(list(script)))
        return servers[-1]

    yield start
    for server in servers:
        server.http.shutdown()


RATE_LIMITED_ONCE = ((429, {"Retry-After": "1"}, error_body("rate_limited")), (202, {}, JOB))


def test_a_429_is_retried_after_its_retry_after_with_the_same_idempotency_key(serve_script):
    server = serve_script(*RATE_LIMITED_ONCE)
    with Client(server.url, "key") as client:
        job = client.generate("a lighthouse")
    assert job.id == "job-1" and len(server.received) == 2
    first, second = server.keys()
    assert first == second and len(first) == 36  # one uuid4 per submit, the same on its retry
    assert server.received[1]["at"] - server.received[0]["at"] >= 0.95
    assert server.received[0]["headers"]["Authorization"] == "Bearer key"


def test_the_async_client_retries_the_same_way(serve_script):
    server = serve_script(*RATE_LIMITED_ONCE)

    async def submit():
        async with AsyncClient(server.url, "key") as client:
            return await client.upscale(b"not checked by this server")

    assert asyncio.run(submit()).id == "job-1"
    assert len(set(server.keys())) == 1 and server.received[1]["at"] - server.received[0]["at"] >= 0.95


def test_each_submit_gets_its_own_key_and_a_given_key_is_sent_as_is(serve_script):
    server = serve_script((202, {}, JOB))
    with Client(server.url, "key") as client:
        client.generate("a")
        client.generate("a")
        client.generate("a", idempotency_key="order-42")
    first, second, given = server.keys()
    assert first != second and given == "order-42"


def test_a_retry_after_past_the_cap_is_not_waited_for(serve_script):
    server = serve_script((429, {"Retry-After": "120"}, error_body("too_many_jobs")))
    with Client(server.url, "key") as client, pytest.raises(RateLimitError) as raised:
        client.generate("a")
    assert raised.value.name == "too_many_jobs" and raised.value.retry_after_s == 120
    assert len(server.received) == 1


def test_a_503_without_retry_after_backs_off_then_raises_once_the_tries_are_spent(serve_script):
    server = serve_script((503, {}, error_body("queue_full")))
    with Client(server.url, "key", retry=QUICK) as client, pytest.raises(ServiceUnavailableError) as raised:
        client.generate("a")
    assert raised.value.name == "queue_full" and raised.value.status_code == 503
    assert len(server.received) == 3 and len(set(server.keys())) == 1


def test_a_bad_request_is_not_retried_and_carries_the_name_and_field(serve_script):
    server = serve_script((400, {}, error_body("invalid_width", field="width")), (202, {}, JOB))
    with Client(server.url, "key") as client, pytest.raises(BadRequestError) as raised:
        client.generate("a", width=65)
    error = raised.value
    assert (error.name, error.field, error.status_code) == ("invalid_width", "width", 400)
    assert len(server.received) == 1


def test_an_unreachable_api_is_tried_again_then_raises_a_connection_error():
    started = time.monotonic()
    unreachable = Client(f"http://127.0.0.1:{free_port()}", "key", retry=QUICK)
    with unreachable, pytest.raises(APIConnectionError) as raised:
        unreachable.generate("a")
    assert raised.value.name == "connection_error" and time.monotonic() - started < 5
