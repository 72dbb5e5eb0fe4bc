"""Benchmarks: one command each (``python -m bench.<name>``), a table printed and JSON written."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from latentq_dev.devstack import Process, environment_without_settings, free_port, wait_until

#: The API key of the benchmarks' local stacks.
KEY = "bench-key"


def write_result(path: Path | None, result: dict) -> None:
    """Write a benchmark's ``result`` as JSON to ``path`` (its folder made if needed), when given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))


def append_row(path: Path | None, row: dict) -> None:
    """Append ``row`` to ``path`` as one JSON line, closed (so flushed) at once: a crash or a time
    limit later in the run loses none of the rows already written."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as stream:
            stream.write(json.dumps(row, default=str) + "\n")


def error_fields(error: BaseException) -> dict[str, str]:
    """Return a row's record of ``error``: its class name and (the start of) its message."""
    return {"error": type(error).__name__, "message": str(error)[:500]}


def service_env(redis_url: str, **settings: str) -> dict[str, str]:
    """Return the environment of a latentq process on ``redis_url`` with dummy S3 credentials (the
    benchmarks that use it never touch S3), plus ``settings`` (``LATENTQ_*`` names)."""
    env = environment_without_settings()
    env.update(LATENTQ_REDIS_URL=redis_url, LATENTQ_API_KEYS=KEY, LATENTQ_S3_ACCESS_KEY_ID="bench",
               LATENTQ_S3_SECRET_ACCESS_KEY="bench", **settings)  # fmt: skip
    return env


@contextmanager
def running_api(env: dict[str, str], log_path: Path, processes: int = 1) -> Iterator[int]:
    """Run the API under uvicorn (``processes`` workers) with ``env`` until it answers; yield its port."""
    port = free_port()
    argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
            "--workers", str(processes), "--no-access-log", "--log-level", "warning"]  # fmt: skip
    api = Process.start("api", argv, log_path, env)
    try:
        healthy = lambda: httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200  # noqa: E731
        wait_until(healthy, 30, "the API", api)
        yield port
    finally:
        api.stop()
