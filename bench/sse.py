"""Event-stream fan-out: many clients following one job over Server-Sent Events.

One API process (uvicorn, as deployed) on a private Redis; a job on a model no worker serves, so
it waits; N clients open ``GET /v1/jobs/{id}/events`` at once. Measured: how long until all N
streams are open and have the ``queued`` event, ``/healthz`` latency while they are open (the API
must stay responsive), and, after a cancel, how long until every client has the terminal event.

    .venv/bin/python -m bench.sse [--clients 200 500] [--json bench/results/sse.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bench import KEY, running_api, service_env, write_result
from latentq_dev.devstack import RedisServer

IDLE = {
    "id": "idle-sd",
    "source": "/nowhere",
    "family": "sd1",
    "limits": {"min_side": 64, "min_pixels": 4096},
}
BODY = {"model": "idle-sd", "prompt": "a lighthouse", "width": 64, "height": 64, "steps": 20}


async def follow(port: int, job_id: str, opened: list[float], ended: list[float]) -> None:
    """Follow the job's events on a raw connection (a light client, so the API is what is measured):
    note when ``queued`` and when the terminal event arrive."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /v1/jobs/{job_id}/events HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 f"Authorization: Bearer {KEY}\r\n\r\n".encode())  # fmt: skip
    while line := await reader.readline():
        if line.startswith(b"event: queued"):
            opened.append(time.perf_counter())
        elif line.startswith(b"event: canceled"):
            ended.append(time.perf_counter())
            break
    writer.close()


async def fan_out(port: int, clients: int) -> dict[str, float]:
    """Follow one waiting job with ``clients`` event streams, then cancel it; return the timings."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=120) as client:
        job_id = (await client.post("/v1/generate", json=BODY)).json()["id"]
        opened: list[float] = []
        ended: list[float] = []
        started = time.perf_counter()
        tasks = [asyncio.create_task(follow(port, job_id, opened, ended)) for _ in range(clients)]
        while len(opened) < clients:
            await asyncio.sleep(0.01)
        all_open_s = time.perf_counter() - started
        health_ms = []
        for _ in range(20):
            before = time.perf_counter()
            (await client.get("/healthz")).raise_for_status()
            health_ms.append((time.perf_counter() - before) * 1000)
        canceled = time.perf_counter()
        (await client.post(f"/v1/jobs/{job_id}/cancel")).raise_for_status()
        cancel_ms = (time.perf_counter() - canceled) * 1000
        await asyncio.wait_for(asyncio.gather(*tasks), 120)
        arrivals = sorted((moment - canceled) * 1000 for moment in ended)
    return {
        "clients": clients,
        "all_open_and_queued_s": round(all_open_s, 2),
        "healthz_median_ms": round(statistics.median(health_ms), 1),
        "healthz_max_ms": round(max(health_ms), 1),
        "cancel_request_ms": round(cancel_ms, 1),
        "terminal_event_median_ms": round(statistics.median(arrivals), 1),
        "terminal_event_last_ms": round(arrivals[-1], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[200, 500])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        redis = RedisServer(Path(temp) / "redis").start()
        # One key opens every stream: its share (default 100) raised to the whole process's.
        env = service_env(
            redis.url, LATENTQ_MODELS=json.dumps([IDLE]), LATENTQ_MAX_STREAMS_PER_ACCOUNT="1000"
        )
        try:
            with running_api(env, Path(temp) / "api.log") as port:
                for clients in args.clients:
                    row = asyncio.run(fan_out(port, clients))
                    print(row)
                    rows.append(row)
        finally:
            redis.stop()
    write_result(args.json, {"benchmark": "sse", "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
