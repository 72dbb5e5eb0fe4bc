"""Overhead of the service over plain diffusers, measured side by side in one run.

N sequential 64x64, 20-step K_EULER jobs through the whole stack (HTTP submit with
``Prefer: wait`` → Redis/RQ → warm worker → PNG → S3 → answer → fetch the image URL), and the same
N calls made directly on the diffusers pipeline in this process, interleaved (a direct call,
then a service job, N times) so that both see the same machine: this VM's speed drifts by ±15 %
within minutes. A second pair does the same at 128x128 (Stability's smallest size) through the
Stability v1 route, which answers with the PNG itself. A third pair repeats the first at 4 steps (the
few-step regime of SD-Turbo and LCM, where the service's fixed cost per job weighs most). Prints a
table and writes JSON.

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
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from bench import KEY, write_result
from latentq_dev.devrun import start_stack, stop_all
from latentq_dev.devstack import environment_without_settings, free_port

BODY = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 20, "sampler": "K_EULER"}
#: Steps of the few-step pair (SD-Turbo and LCM run 1-4).
FEW_STEPS = 4
STABILITY_BODY = {"text_prompts": [{"text": BODY["prompt"]}], "width": 128, "height": 128, "steps": 20,
                  "sampler": "K_EULER"}  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    """Return the ``q`` quantile (0..1) of ``values`` by nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def service_job(client: httpx.Client, seed: int, steps: int = 20) -> tuple[float, float]:
    """Run one job through the stack as an integrator would: submit with ``Prefer: wait``, then fetch
    the image. Return its wall time (s) and its server-side time (s, ``created_at`` to ``finished_at``
    in its record)."""
    started = time.perf_counter()
    job = client.post(
        "/v1/generate", json={**BODY, "seed": seed, "steps": steps}, headers={"Prefer": "wait=60"}
    ).json()
    assert job["status"] == "succeeded", job
    client.get(job["images"][0]["url"]).raise_for_status()
    return time.perf_counter() - started, _seconds_between(job["created_at"], job["finished_at"])


def stability_job(client: httpx.Client, seed: int) -> float:
    """Run one Stability v1 text-to-image call (``Accept: image/png``); return its wall time (s)."""
    started = time.perf_counter()
    headers = {"Accept": "image/png"}
    client.post("/v1/generation/tiny-sd/text-to-image", json={**STABILITY_BODY, "seed": seed}, headers=headers
                ).raise_for_status()  # fmt: skip
    return time.perf_counter() - started


def _seconds_between(start: str, end: str) -> float:
    parse = datetime.fromisoformat
    return (parse(end) - parse(start)).total_seconds()


def direct_pipeline(model_dir: Path) -> Any:
    """Return the plain diffusers pipeline of ``model_dir`` with the Euler scheduler (``K_EULER``)."""
    from diffusers import AutoPipelineForText2Image, EulerDiscreteScheduler

    pipe = AutoPipelineForText2Image.from_pretrained(model_dir)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    return pipe


def direct_call(pipe: Any, seed: int, side: int = 64, steps: int = 20) -> float:
    """Return the wall time (s) of one plain diffusers call."""
    import torch

    started = time.perf_counter()
    pipe(BODY["prompt"], width=side, height=side, num_inference_steps=steps,
         generator=torch.Generator("cpu").manual_seed(seed))  # fmt: skip
    return time.perf_counter() - started


def interleaved(count: int, first: Callable[[int], Any], second: Callable[[int], Any]) -> tuple[list, list]:
    """Run ``first(seed)`` then ``second(seed)`` for ``count`` + 1 seeds; return their results, the
    first round (warm-up: connections, caches) left out."""
    firsts, seconds = [], []
    for seed in range(1, count + 2):
        a, b = first(seed), second(seed)
        if seed > 1:
            firsts.append(a)
            seconds.append(b)
    return firsts, seconds


def summarize(name: str, times: list[float]) -> dict:
    """Return throughput and latency figures (ms) for ``times`` (s)."""
    return {
        "name": name,
        "jobs": len(times),
        "jobs_per_s": len(times) / sum(times),  # sequential jobs: throughput is 1 / mean time
        "median_ms": statistics.median(times) * 1000,
        "p95_ms": percentile(times, 0.95) * 1000,
    }


def added(direct_times: list[float], service_times: list[float]) -> dict[str, float]:
    """Return the median and p95 (ms) of what each service job took over its interleaved direct twin."""
    extra = [service - direct for direct, service in zip(direct_times, service_times, strict=True)]
    return {
        "median": round(statistics.median(extra) * 1000, 1),
        "p95": round(percentile(extra, 0.95) * 1000, 1),
    }


def tiny_stack(state: Path, **settings: str) -> tuple[Path, dict[str, str]]:
    """Build the embedded ``tiny-sd`` under ``state``; return it and the environment of a stack (as
    ``start_stack`` runs it) serving it, with ``settings`` (``LATENTQ_*`` names) added."""
    from worker.embedded.models import build_tiny_model

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
        pipe = direct_pipeline(model_dir)
        port, started = free_port(), []
        headers = {"Authorization": f"Bearer {KEY}"}
        try:
            start_stack(state, env, port, started, access_log=False)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=70) as client:
                direct_times, pairs = interleaved(
                    args.jobs, lambda seed: direct_call(pipe, seed), lambda seed: service_job(client, seed)
                )
                direct_128_times, stability_times = interleaved(
                    args.jobs,
                    lambda seed: direct_call(pipe, seed, 128),
                    lambda seed: stability_job(client, seed),
                )
                direct_few_times, few_pairs = interleaved(
                    args.jobs,
                    lambda seed: direct_call(pipe, seed, steps=FEW_STEPS),
                    lambda seed: service_job(client, seed, FEW_STEPS),
                )
        finally:
            stop_all(started)
    direct = summarize("direct diffusers call", direct_times)
    server = summarize("service, job record (created→finished)", [server for _, server in pairs])
    service = summarize("service, client view (Prefer: wait, fetch)", [wall for wall, _ in pairs])
    direct_128 = summarize("direct diffusers call, 128x128", direct_128_times)
    stability = summarize("Stability route, 128x128, PNG answer", stability_times)
    direct_few = summarize(f"direct diffusers call, {FEW_STEPS} steps", direct_few_times)
    server_few = summarize(f"service, job record, {FEW_STEPS} steps", [server for _, server in few_pairs])
    service_few = summarize(f"service, client view, {FEW_STEPS} steps", [wall for wall, _ in few_pairs])
    result = {
        "benchmark": "overhead",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
        "job": BODY,
        "rows": [direct, server, service, direct_128, stability, direct_few, server_few, service_few],
        "throughput_ratio": service["jobs_per_s"] / direct["jobs_per_s"],
        "added_median_ms": service["median_ms"] - direct["median_ms"],
        "server_added_median_ms": server["median_ms"] - direct["median_ms"],
        "stability_throughput_ratio": stability["jobs_per_s"] / direct_128["jobs_per_s"],
        "stability_added_median_ms": stability["median_ms"] - direct_128["median_ms"],
        "few_steps": FEW_STEPS,
        "few_steps_throughput_ratio": service_few["jobs_per_s"] / direct_few["jobs_per_s"],
        "few_steps_server_added_median_ms": server_few["median_ms"] - direct_few["median_ms"],
        # Each service job minus the direct call just before it: the same seed, the same minute.
        "added_per_job_ms": added(direct_times, [wall for wall, _ in pairs]),
        "stability_added_per_job_ms": added(direct_128_times, stability_times),
        "few_steps_added_per_job_ms": added(direct_few_times, [wall for wall, _ in few_pairs]),
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
    print(f"added per job (service minus its direct twin), ms: /v1/generate {result['added_per_job_ms']}, "
          f"Stability route {result['stability_added_per_job_ms']}")  # fmt: skip
    print(f"{FEW_STEPS}-step service/direct throughput: {result['few_steps_throughput_ratio']:.3f}; "
          f"added per job, ms: {result['few_steps_added_per_job_ms']}")  # fmt: skip
    write_result(args.json, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
