"""Following a job's event stream through a loopback server that drops it: the client resumes with
``Last-Event-ID``, losing and repeating nothing, and a wait past its timeout raises."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from latentq_client import APIConnectionError, Client, Job, RetryPolicy, WaitTimeoutError

FINAL = {"id": "j", "status": "succeeded", "images": [], "error": None}
#: What each connection to the stream sends; the server then closes it.
PARTS = [
    'id: 1-0\nevent: queued\ndata: {}\n\nid: 2-0\nevent: progress\ndata: {"step": 1, "total_steps": 2}\n\n',
    'id: 3-0\nevent: progress\ndata: {"step": 2, "total_steps": 2}\n\n'
    f"id: 4-0\nevent: succeeded\ndata: {json.dumps(FINAL)}\n\n",
]


class StreamServer:
    """Serves ``GET /v1/jobs/j/events`` as ``parts`` (one per connection, the last repeats), each
    connection closed after its part; records each connection's ``Last-Event-ID``."""

    def __init__(self, parts: list[str], hold_s: float = 0.0) -> None:
        self.last_event_ids: list[str | None] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.last_event_ids.append(self.headers.get("Last-Event-ID"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                self.wfile.write(parts[min(len(server.last_event_ids), len(parts)) - 1].encode())
                self.wfile.flush()
                time.sleep(hold_s)

            def log_message(self, *args: object) -> None:
                pass

        self.http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.http.server_address[1]}"
        threading.Thread(target=self.http.serve_forever, daemon=True).start()


@pytest.fixture
def stream_server() -> Iterator:
    servers: list[StreamServer] = []

    def start(parts: list[str], hold_s: float = 0.0) -> StreamServer:
        servers.append(StreamServer(parts, hold_s))
        return servers[-1]

    yield start
    for server in servers:
        server.http.shutdown()


def follow(url: str, timeout: float | None = None, attempts: int = 3) -> tuple[Job, list[str]]:
    with Client(url, "key", retry=RetryPolicy(max_attempts=attempts, backoff_s=0.01)) as client:
        job = Job(client._transport, {"id": "j", "status": "queued"})
        return job, [f"{event.name}:{event.id}" for event in job.events(timeout)]


def test_a_dropped_stream_is_resumed_after_the_last_event_it_gave(stream_server):
    server = stream_server(PARTS)
    job, events = follow(server.url)
    assert events == ["queued:1-0", "progress:2-0", "progress:3-0", "succeeded:4-0"]
    assert server.last_event_ids == [None, "2-0"]
    assert job.status == "succeeded" and job.done


def test_a_stream_that_keeps_ending_early_raises_after_the_attempts(stream_server):
    server = stream_server([": waiting\n\n"])
    with pytest.raises(APIConnectionError):
        follow(server.url, attempts=2)
    assert len(server.last_event_ids) == 2


def test_a_wait_past_its_timeout_raises_while_the_job_goes_on(stream_server):
    server = stream_server([PARTS[0] + ": waiting\n\n"], hold_s=5)
    started = time.monotonic()
    with pytest.raises(WaitTimeoutError) as raised:
        follow(server.url, timeout=1)
    assert raised.value.name == "wait_timeout" and 0.9 < time.monotonic() - started < 3
