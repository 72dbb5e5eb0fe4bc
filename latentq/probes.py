"""A process's own small HTTP listener for Prometheus and its orchestrator: ``GET /metrics``,
``GET /livez`` and ``GET /readyz`` on ``LATENTQ_METRICS_PORT``, served by a thread of its own so
that they answer while the process's main thread samples, delivers or waits.

``/livez`` answers from ``Vitals``: each loop of the process says, each time it comes round, by
when it will be back (``expect``); the process is live while every loop keeps its word (200), and
stuck once one is late (503: restart it). ``/readyz`` answers from ``Vitals.ready``: set by the
process once it takes work, cleared when it drains.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CollectorRegistry, generate_latest

from latentq.settings import CommonSettings

log = logging.getLogger("latentq.probes")

#: The Prometheus text format's content type (``prometheus_client.CONTENT_TYPE_LATEST``).
METRICS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Vitals:
    """What ``/livez`` and ``/readyz`` answer from: the deadlines of the process's loops and whether
    it takes work."""

    def __init__(self) -> None:
        #: Whether the process takes work now (its models warm; not draining).
        self.ready = False
        self._deadlines: dict[str, float] = {}

    def expect(self, loop: str, within_s: float) -> None:
        """Note that ``loop`` comes round again within ``within_s`` seconds (else it is stuck)."""
        self._deadlines[loop] = time.monotonic() + within_s

    def forget(self, *loops: str) -> None:
        """Stop watching ``loops`` (they ended)."""
        for loop in loops:
            self._deadlines.pop(loop, None)

    def late(self) -> list[str]:
        """Return the loops past their deadline (none: the process is live)."""
        now = time.monotonic()
        return sorted(loop for loop, deadline in list(self._deadlines.items()) if now > deadline)

    def live(self) -> bool:
        """Whether every loop came round in time (a process that has not started one yet is live)."""
        return not self.late()


class ProbeServer:
    """``/metrics`` (``render()``'s text; 404 without it), ``/livez`` and ``/readyz`` (from
    ``vitals``; 404 without) on ``host:port``, in a daemon thread."""

    def __init__(
        self, host: str, port: int, render: Callable[[], bytes] | None, vitals: Vitals | None = None
    ) -> None:
        probes = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, content_type, body = probes.answer(self.path.split("?", 1)[0])
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape or probe every few seconds: not worth a log line each

        self.render, self.vitals = render, vitals
        self.server = ThreadingHTTPServer((host, port), Handler)  # binds now: a taken port fails here
        self.server.daemon_threads = True
        #: The port bound (``port`` 0 picks a free one).
        self.port = self.server.server_address[1]

    def answer(self, path: str) -> tuple[int, str, bytes]:
        """Return the status, content type and body for ``GET path``."""
        if path == "/metrics" and self.render is not None:
            return 200, METRICS_CONTENT_TYPE, self.render()
        if path in ("/livez", "/readyz") and self.vitals is not None:
            live = self.vitals.live()
            ok = live if path == "/livez" else live and self.vitals.ready
            if not live:
                log.warning("liveness: late loops %s", self.vitals.late())
            return (200, "text/plain", b"ok\n") if ok else (503, "text/plain", b"not ok\n")
        return 404, "text/plain", b"not found\n"

    def start(self) -> ProbeServer:
        """Serve in a daemon thread; return self."""
        threading.Thread(target=self.server.serve_forever, name="latentq-probes", daemon=True).start()
        return self

    def stop(self) -> None:
        """Stop serving and free the port."""
        self.server.shutdown()
        self.server.server_close()


def serve_probes(settings: CommonSettings, registry: CollectorRegistry, vitals: Vitals) -> ProbeServer | None:
    """Serve ``registry``'s metrics (unless ``LATENTQ_METRICS`` is off) and ``vitals``' probes on
    ``LATENTQ_METRICS_PORT``, from now on; None if no port is set. A port taken ends the start-up."""
    if settings.metrics_port is None:
        return None
    render = (lambda: generate_latest(registry)) if settings.metrics else None
    try:
        server = ProbeServer(settings.metrics_host, settings.metrics_port, render, vitals)
    except OSError as error:
        raise SystemExit(
            f"LATENTQ_METRICS_PORT={settings.metrics_port}: cannot listen on "
            f"{settings.metrics_host}:{settings.metrics_port} ({error})"
        ) from None
    log.info("metrics and probes on http://%s:%d", settings.metrics_host, server.port)
    return server.start()
