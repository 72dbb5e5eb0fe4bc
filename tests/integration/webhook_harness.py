"""The webhook test harness: a recording HTTP receiver on loopback, the dispatcher as a process
the tests can stop and start, their fixtures (``receiver``, ``dispatcher``, ``hook_api``), and
helpers that verify signatures and wait for deliveries."""

from __future__ import annotations

import signal
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest
from standardwebhooks import Webhook

from latentq_dev.devstack import Process, wait_until
from tests.conftest import API_KEY, api_settings, serve, service_env

#: Retries after 2 s, then 2 s: three attempts in all, quick enough for tests. (RQ's scheduler keeps
#: due times in whole seconds, so a retry may come up to 1 s early.)
SCHEDULE = "2,2"


class Receiver:
    """An HTTP server on 127.0.0.1 that records every request and answers each path with a script
    of statuses (the last repeats; default 200)."""

    def __init__(self) -> None:
        self.requests: dict[str, list[dict]] = defaultdict(list)
        self.scripts: dict[str, list[int]] = {}
        #: Seconds to hold each of the first requests to a path before answering.
        self.delays: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    seen = receiver.requests[self.path]
                    seen.append({"headers": dict(self.headers), "body": body, "at": time.monotonic()})
                    script = receiver.scripts.get(self.path, [200])
                    status = script[min(len(seen), len(script)) - 1]
                    delays = receiver.delays.get(self.path, [])
                    delay = delays[len(seen) - 1] if len(seen) <= len(delays) else 0.0
                time.sleep(delay)
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/redirected")
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"http://{host}:{self.port}{path}"

    def wait(self, path: str, count: int, timeout_s: float = 30) -> list[dict]:
        wait_until(lambda: len(self.requests[path]) >= count, timeout_s, f"{count} request(s) to {path}")
        return self.requests[path]


class Dispatcher:
    """``python -m dispatcher`` against the test services, which a test may stop and start."""

    def __init__(self, env: dict[str, str], log_path) -> None:
        self.env, self.log_path, self.process = env, log_path, None

    def start(self) -> None:
        argv = [sys.executable, "-m", "dispatcher"]
        self.process = Process.start("dispatcher", argv, self.log_path, self.env)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.process = None

    def kill(self) -> None:
        """SIGKILL the dispatcher, as a crash would."""
        if self.process is not None:
            self.process.stop(signal.SIGKILL)
            self.process = None


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    receiver = Receiver()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def dispatcher(redis_server, s3_server, tmp_path_factory) -> Iterator[Dispatcher]:
    env = service_env(
        redis_server, s3_server, webhook_allowed_hosts="127.0.0.1,localhost",
        webhook_retry_schedule_s=SCHEDULE, webhook_timeout_s="5", dispatcher_name="test-dispatcher",
        worker_lost_s="2",
    )  # fmt: skip
    dispatcher = Dispatcher(env, tmp_path_factory.mktemp("logs") / "dispatcher.log")
    dispatcher.start()
    yield dispatcher
    dispatcher.stop()


@pytest.fixture(scope="module")
def hook_api(redis_server, s3_server) -> Iterator[str]:
    """An API that lets webhooks go to 127.0.0.1 and localhost (the receiver), and nothing else private."""
    settings = api_settings(redis_server, s3_server, webhook_allowed_hosts=("127.0.0.1", "localhost"))
    with serve(settings) as url:
        yield url


def api_client(url: str, key: str = API_KEY) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=30)


def secret(client: httpx.Client) -> str:
    return client.get("/v1/webhook").raise_for_status().json()["secret"]


def verified(request: dict, key_secret: str) -> dict:
    """Return the payload of a received request after checking its signature like a receiver does."""
    return Webhook(key_secret).verify(request["body"], request["headers"])


def delivery(client: httpx.Client, job_id: str, event: str, state: str, timeout_s: float = 30) -> dict:
    """Wait until the job shows ``state`` for the delivery of ``event``; return that delivery."""
    found: dict = {}

    def reached() -> bool:
        deliveries = client.get(f"/v1/jobs/{job_id}").json()["webhook"]["deliveries"]
        found.update(deliveries.get(event) or {})
        return found.get("state") == state

    wait_until(reached, timeout_s, f"{event} delivery {state}")
    return found
