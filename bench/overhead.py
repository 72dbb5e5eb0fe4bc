"""Overhead of the service over plain diffusers, measured side by side in one run.

N sequential 64x64, 20-step K_EULER jobs through the whole stack (HTTP submit → Redis/RQ →
warm worker → PNG → S3 → poll → fetch the image URL), then the same N calls made directly on
the diffusers pipeline in this process. A second pair does the same at 128x128 (Stability's
smallest size) through the Stability v1 route, which waits on the job's event stream instead
of polling and answers with the PNG. Prints a table and writes JSON.

    .venv/bin/python -m bench.overhead --jobs 30 [--json bench/results/overhead.json]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import httpx

from bench import KEY, write_result
from latentq.devrun import start_stack, stop_all
from latentq.devstack import environment_without_settings, free_port

BODY = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 20, "sampler": "K_EULER"}
STABILITY_BODY = {"text_prompts": [{"text": BODY["prompt"]}], "width": 128, "height": 128, "steps": 20,
                  "sampler": "K_EULER"}  # fmt: skip
#: Seconds between status polls. Polling adds up to this to each job's client-view latency; polling
#: much faster steals CPU from sampling on a 2-core machine (2 ms polls halved throughput here).
POLL_S = 0.02


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run_service_jobs(base_url: str, count: int) -> tuple[list[float], list[float]]:
    """Run ``count`` sequential jobs; return each one's wall time (s, submit to image downloaded)
    and its server-side time (s, created_at to finished_at in the job record: no polling delay)."""
    times, server_times = [], []
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}) as client:
        for index in range(count + 1):
            started = time.perf_counter()
            job_id = client.post("/v1/generate", json={**BODY, "seed": index + 1}).json()["id"]
            while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in ("succeeded", "failed"):
                time.sleep(POLL_S)
            assert job["status"] == "succeeded", job
            client.get(job["images"][0]["url"]).raise_for_status()
            if index:  # the first job warms connections and caches
                times.append(time.perf_counter() - started)
                server_times.append(_seconds_between(job["created_at"], job["finished_at"]))
    return times, server_times


def run_stability_jobs(base_url: str, count: int) -> list[float]:
    """Run ``count`` sequential Stability v1 text-to-image calls (``Accept: image/png``); return
    each one's wall time (s, request sent to PNG received)."""
    times = []
    headers = {"Authorization": f"Bearer {KEY}", "Accept": "image/png"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        for index in range(count + 1):
            started = time.perf_counter()
            body = {**STABILITY_BODY, "seed": index + 1}
            client.post("/v1/generation/tiny-sd/text-to-image", json=body).raise_for_status()
            if index:
                times.append(time.perf_counter() - started)
    return times


def _seconds_between(start: str, end: str) -> float:
    parse = datetime.fromisoformat
    return (parse(end) - parse(start)).total_seconds()


def run_direct_calls(model_dir: Path, count: int, side: int = 64) -> list[float]:
    """Return the wall time (s) of each of ``count`` plain diffusers calls in this process."""
    import torch
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    pipe = AutoPipelineForText2Image.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    times = []
    for index in range(count + 1):
        started = time.perf_counter()
        pipe(BODY["prompt"], width=side, height=side, num_inference_steps=20,
             generator=torch.Generator("cpu").manual_seed(index + 1))  # fmt: skip
        if index:
            times.append(time.perf_counter() - started)
    return times


def summarize(name: str, times: list[float]) -> dict:
    """Return throughput and latency figures (ms) for ``times`` (s)."""
    return {
        "name": name,
        "jobs": len(times),
        "jobs_per_s": len(times) / sum(times),  # sequential jobs: throughput is 1 / mean time
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": percentile(times, 0.95) * 1000,
    }


def tiny_stack(state: Path, **settings: str) -> tuple[Path, dict[str, str]]:
    """Build the embedded ``tiny-sd`` under ``state``; return it and the environment of a stack (as
    ``start_stack`` runs it) serving it, with ``settings`` (``LATENTQ_*`` names) added."""
    from worker.tiny_model import build_tiny_model

    model_dir = build_tiny_model(state / "models" / "tiny-sd")
    env = environment_without_settings()
    env.update(LATENTQ_EMBEDDED_MODEL_DIR=str(model_dir.parent), LATENTQ_WORKER_MODELS="tiny-sd",
               LATENTQ_API_KEYS=KEY, LATENTQ_S3_BUCKET="bench", **settings)  # fmt: skip
    return model_dir, env


def main() -> int:
    """Run the benchmark; print a table; write JSON if asked."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=30)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="latentq-bench-") as temp:
        state = Path(temp)
        model_dir, env = tiny_stack(state)
        port, started = free_port(), []
        try:
            start_stack(state, env, port, started, access_log=False)
            times, server_times = run_service_jobs(f"http://127.0.0.1:{port}", args.jobs)
            stability_times = run_stability_jobs(f"http://127.0.0.1:{port}", args.jobs)
        finally:
            stop_all(started)
        direct = summarize("direct diffusers call", run_direct_calls(model_dir, args.jobs))
        direct_128 = summarize("direct diffusers call, 128x128", run_direct_calls(model_dir, args.jobs, 128))
    service = summarize(f"service, client view (poll {POLL_S * 1000:g} ms)", times)
    server = summarize("service, job record (created→finished)", server_times)
    stability = summarize("Stability route, 128x128, PNG answer", stability_times)
    result = {
        "benchmark": "overhead",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "job": BODY,
        "rows": [direct, server, service, direct_128, stability],
        "throughput_ratio": service["jobs_per_s"] / direct["jobs_per_s"],
        "added_median_ms": service["median_ms"] - direct["median_ms"],
        "server_added_median_ms": server["median_ms"] - direct["median_ms"],
        "stability_throughput_ratio": stability["jobs_per_s"] / direct_128["jobs_per_s"],
        "stability_added_median_ms": stability["median_ms"] - direct_128["median_ms"],
    }
    print(f"{'':42} {'jobs/s':>8} {'median ms':>10} {'p95 ms':>8}")
    for row in result["rows"]:
        print(f"{row['name']:42} {row['jobs_per_s']:8.2f} {row['median_ms']:10.1f} {row['p95_ms']:8.1f}")
    print(
        f"client-view service/direct throughput: {result['throughput_ratio']:.3f}; added median latency "
        f"{result['added_median_ms']:.1f} ms (client), {result['server_added_median_ms']:.1f} ms (server)"
    )
    print(
        f"Stability route/direct throughput at 128x128: {result['stability_throughput_ratio']:.3f}; added "
        f"median latency {result['stability_added_median_ms']:.1f} ms"
    )
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
