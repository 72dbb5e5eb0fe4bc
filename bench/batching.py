"""Throughput under concurrent load: the service's cross-request batching vs a plain diffusers loop.

``--clients`` concurrent clients (default 8) each submit 64x64, 20-step K_EULER jobs one after
another for ``--seconds`` through the whole stack (HTTP with ``Prefer: wait`` → Redis/RQ → one
warm worker batching up to ``LATENTQ_MAX_BATCH`` images → PNG → S3 → fetch the image URL); then
the direct diffusers batch-1 loop runs in this process for as long. Reports images/s of each, the
ratio, the per-job latency distribution and the batch sizes the worker formed.

    .venv/bin/python -m bench.batching [--clients 8] [--seconds 60] [--max-batch 8]
        [--batch-wait-ms 50] [--json bench/results/batching.json]
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from bench import KEY, write_result
from bench.overhead import BODY, direct_call, direct_pipeline, percentile, tiny_stack
from latentq_dev.devrun import start_stack, stop_all
from latentq_dev.devstack import free_port


def run_clients(base_url: str, clients: int, seconds: float) -> tuple[list[float], list[int]]:
    """Run ``clients`` submit-and-wait loops for ``seconds``; return each finished job's latency (s,
    submit to image downloaded) and its batch size."""
    latencies: list[float] = []
    sizes: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + seconds

    def client_loop(index: int) -> None:
        headers = {"Authorization": f"Bearer {KEY}", "Prefer": "wait=60"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=120) as client:
            seed = index * 100_000
            while time.monotonic() < deadline:
                seed += 1
                started = time.perf_counter()
                job = client.post("/v1/generate", json={**BODY, "seed": seed}).json()
                assert job["status"] == "succeeded", job
                client.get(job["images"][0]["url"]).raise_for_status()
                with lock:
                    latencies.append(time.perf_counter() - started)
                    sizes.append(job["batch_size"])

    threads = [threading.Thread(target=client_loop, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, sizes


def round_times(log: Path) -> list[tuple[float, float]]:
    """Return, for each round in the worker's log, the milliseconds sampling sat idle before it and
    the milliseconds it sampled."""
    pattern = re.compile(
        r"round of \d+ jobs: sampling sat idle ([\d.]+) ms before it, then sampled ([\d.]+) ms"
    )
    return [(float(match.group(1)), float(match.group(2))) for match in pattern.finditer(log.read_text())]


def utilisation(rounds: list[tuple[float, float]]) -> dict[str, float | None]:
    """Return the worker's busy ratio over ``rounds`` (its sampling time ÷ the wall time from the
    start of the first idle gap to the end of the last round) and its idle gaps' median and p95, ms."""
    idle = [gap for gap, _ in rounds]
    wall_ms = sum(gap + sampled for gap, sampled in rounds)
    return {
        "busy_ratio": round(sum(sampled for _, sampled in rounds) / wall_ms, 3) if wall_ms else None,
        "idle_ms_median": round(statistics.median(idle), 1) if idle else None,
        "idle_ms_p95": round(percentile(idle, 0.95), 1) if idle else None,
    }


def run_direct_loop(model_dir: Path, seconds: float) -> int:
    """Return how many plain diffusers batch-1 calls finish in ``seconds`` in this process."""
    pipe = direct_pipeline(model_dir)
    direct_call(pipe, 1)  # warm
    count, deadline = 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        direct_call(pipe, count + 1)
        count += 1
    return count


def main() -> int:
    """Run the benchmark; print a table; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--batch-wait-ms", type=float, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latentq-bench-") as temp:
        state = Path(temp)
        model_dir, env = tiny_stack(
            state, LATENTQ_MAX_BATCH=str(args.max_batch), LATENTQ_BATCH_WAIT_MS=str(args.batch_wait_ms)
        )
        port, started = free_port(), []
        try:
            start_stack(state, env, port, started, access_log=False)
            run_clients(f"http://127.0.0.1:{port}", args.clients, 3)  # warm connections and caches
            log = state / "logs" / "worker.log"
            rounds_before = len(round_times(log))
            latencies, sizes = run_clients(f"http://127.0.0.1:{port}", args.clients, args.seconds)
            rounds = round_times(log)[rounds_before + 1 :]  # the rounds of the measured period
        finally:
            stop_all(started)
        direct_count = run_direct_loop(model_dir, args.seconds)
    service_rate = len(latencies) / args.seconds
    direct_rate = direct_count / args.seconds
    result = {
        "benchmark": "batching",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "job": BODY,
        "clients": args.clients,
        "seconds": args.seconds,
        "max_batch": args.max_batch,
        "batch_wait_ms": args.batch_wait_ms,
        "service_images_per_s": round(service_rate, 2),
        "direct_images_per_s": round(direct_rate, 2),
        "ratio": round(service_rate / direct_rate, 2),
        "latency_ms": {
            q: round(percentile(latencies, value) * 1000, 1)
            for q, value in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0))
        },
        "batch_sizes": dict(sorted(collections.Counter(sizes).items())),
        "rounds": len(rounds),
        "worker": utilisation(rounds),
    }
    print(f"service ({args.clients} clients, max batch {args.max_batch}): {service_rate:.2f} images/s")
    print(f"direct diffusers batch-1 loop: {direct_rate:.2f} images/s; ratio {result['ratio']:.2f}")
    print(f"latency ms: {result['latency_ms']}; batch sizes (jobs: count): {result['batch_sizes']}")
    worker = result["worker"]
    print(f"{len(rounds)} rounds; worker busy ratio {worker['busy_ratio']}; sampling idle between rounds: "
          f"median {worker['idle_ms_median']} ms, p95 {worker['idle_ms_p95']} ms")  # fmt: skip
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
