"""``python -m bench.scaleout``: run the benchmark (see the package docstring)."""

from __future__ import annotations

import argparse
import collections
import json
import platform
import signal
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench.scaleout
from bench import write_result
from bench.overhead import percentile
from bench.scaleout.cpu import CpuWindow
from bench.scaleout.load import BODY, Load, run_load
from bench.scaleout.proofs import check, objects_per_job, settle
from bench.scaleout.stack import (
    BUCKET,
    THREAD_VARIABLES,
    Stack,
    machine_cores,
    threads_per_worker,
    torch_threads_under,
)

#: The models of the mixed scenario, one worker each.
MIXED = ("tiny-sd", "tiny-sdxl")


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def quantiles_ms(values: list[float]) -> dict[str, float | None]:
    """Return the p50 and p95 of ``values`` (seconds) in milliseconds (None when empty)."""
    if not values:
        return {"p50": None, "p95": None}
    return {name: round(percentile(values, q) * 1000, 1) for name, q in (("p50", 0.5), ("p95", 0.95))}


def measured(load: Load, warmup_s: float, seconds: float) -> dict[str, Any]:
    """Return the figures of the measured window (after ``warmup_s``, ``seconds`` long)."""
    start, end = load.started + warmup_s, load.started + warmup_s + seconds
    done = [job for job in load.ended if job.status == "succeeded" and start <= job.ended < end]
    submitted = [job for job in load.ended if job.status == "succeeded" and start <= job.submitted < end]
    in_window = lambda reads: [took for at, took in reads if start <= at < end]  # noqa: E731
    return {
        "images_per_s": round(sum(job.samples for job in done) / seconds, 2),
        "jobs_done": len(done),
        "images_done": sum(job.samples for job in done),
        "latency_ms": quantiles_ms([job.ended - job.submitted for job in submitted]),
        "api_healthz_ms": quantiles_ms(in_window(load.probes["healthz"])),
        "api_job_get_ms": quantiles_ms(in_window(load.probes["job"])),
        "api_reads": len(in_window(load.probes["healthz"])) + len(in_window(load.probes["job"])),
        "batch_sizes": dict(sorted(collections.Counter(job.batch_size or 1 for job in done).items())),
        "refused": dict(load.refused),
        "transport_errors": load.transport_errors,
        "unanswered": len(load.unanswered),
    }


def run_phase(stack: Stack, served: list[tuple[str, ...]], threads: int, args: argparse.Namespace) -> dict:
    """Start workers serving ``served`` (one entry each), load them, check, stop them; return the row."""
    models = sorted({model for models in served for model in models})
    say(f"{len(served)} worker(s) {served}, {threads} thread(s) each: starting")
    names = stack.start_workers(served, threads)
    try:
        say(f"  ready; {args.clients} clients for {args.warmup_s:g} + {args.seconds:g} s")
        cpu = CpuWindow(stack.process_groups(), args.warmup_s, args.seconds)
        load = run_load(stack.base_url, args.clients, models, args.warmup_s + args.seconds)
        cores_used = cpu.cores()
        settle(stack.redis, list(load.accepted))
        proofs = check(stack.redis, objects_per_job(stack.s3.client(), BUCKET), load.accepted,
                       {job.job_id: job.images for job in load.ended},
                       {name: stack.served[name] for name in names})  # fmt: skip
    finally:
        stop_exits = stack.stop_workers()
    row = {"workers": len(served), "served": {name: list(stack.served[name]) for name in names},
           "threads_per_worker": threads, **measured(load, args.warmup_s, args.seconds),
           "cores_used": cores_used, "proofs": proofs, "stop_exits": stop_exits}  # fmt: skip
    # A worker's exit status after its SIGTERM (all jobs ended by then) is reported, not judged here.
    row["ok"] = (
        proofs["ok"] and row["jobs_done"] > 0 and not row["unanswered"] and not row["transport_errors"]
    )
    say(f"  {json.dumps({key: value for key, value in row.items() if key != 'proofs'})}")
    return row


def say(line: str) -> None:
    """Print a progress line on stderr."""
    print(line, file=sys.stderr, flush=True)


#: The table's columns.
COLUMNS = (
    "scenario", "workers", "torch threads each (seen)", "images/s", "vs 1 worker", "jobs done",
    "latency p50 / p95 ms", "GET /healthz p50 / p95 ms", "GET /v1/jobs/{id} p50 / p95 ms",
    "cores used: workers / all", "accepted / succeeded", "RQ executions", "run >1", "objects / images asked",
    "misrouted", "proofs",
)  # fmt: skip
HEADER = "| " + " | ".join(COLUMNS) + " |\n| --- |" + " ---: |" * (len(COLUMNS) - 2) + " --- |"


def table(rows: list[dict], torch_threads: dict[int, int]) -> str:
    """Return the rows as a markdown table."""
    base = next((row["images_per_s"] for row in rows if row["workers"] == 1 and "mixed" not in row), None)
    lines = [HEADER]
    for row in rows:
        proofs, threads, cores = row["proofs"], row["threads_per_worker"], row["cores_used"]
        ratio = f"{row['images_per_s'] / base:.2f}x" if base and "mixed" not in row else "-"
        pair = lambda figures: f"{figures['p50']} / {figures['p95']}"  # noqa: E731
        cells = [
            "two models" if "mixed" in row else "tiny-sd", row["workers"],
            f"{threads} ({torch_threads[threads]})",
            f"{row['images_per_s']:.2f}", ratio, row["jobs_done"], pair(row["latency_ms"]),
            pair(row["api_healthz_ms"]), pair(row["api_job_get_ms"]),
            f"{cores['workers']} / {cores['total']}" if cores else "-",
            f"{proofs['accepted']} / {proofs['statuses'].get('succeeded', 0)}", proofs["rq_executions"],
            proofs["jobs_run_more_than_once"], f"{proofs['objects_in_s3']} / {proofs['images_requested']}",
            proofs["misrouted"], "ok" if row["ok"] else "FAILED",
        ]  # fmt: skip
        lines.append("| " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Return the command's arguments."""
    parser = argparse.ArgumentParser(description=bench.scaleout.__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60.0, help="measured seconds per worker count")
    parser.add_argument("--warmup-s", type=float, default=10.0, help="seconds of load before measuring")
    parser.add_argument("--max-batch", type=int, default=8, help="LATENTQ_MAX_BATCH of each worker")
    parser.add_argument("--threads", type=int, default=0, help="torch threads a worker (0: cores // workers)")
    parser.add_argument("--no-mixed", action="store_true", help="skip the two-model scenario")
    parser.add_argument("--state", type=Path, help="keep the stack's files and logs here")
    parser.add_argument("--json", type=Path)
    return parser.parse_args(argv)


def run_all(args: argparse.Namespace, state: Path, threads_of: Callable[[int], int]) -> list[dict]:
    """Run every worker count, then the mixed scenario, on one stack under ``state``; return the rows."""
    rows = []
    stack = Stack(state, args.max_batch, ("tiny-sd",) if args.no_mixed else MIXED)
    try:
        for workers in args.workers:
            rows.append(run_phase(stack, [("tiny-sd",)] * workers, threads_of(workers), args))
        if not args.no_mixed:
            mixed = run_phase(stack, [(model,) for model in MIXED], threads_of(len(MIXED)), args)
            rows.append({"mixed": True, **mixed})
    finally:
        stack.stop()
    return rows


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; print a table; write JSON if asked; exit 1 if a proof fails."""
    args = parse_args(argv)
    cores = machine_cores()
    threads_of = lambda workers: args.threads or threads_per_worker(workers, cores)  # noqa: E731
    counts = [*args.workers, *([] if args.no_mixed else [len(MIXED)])]
    torch_threads = {threads: torch_threads_under(threads) for threads in {threads_of(n) for n in counts}}
    signal.signal(signal.SIGTERM, _interrupt)  # stopped from outside: the stack is still stopped
    with tempfile.TemporaryDirectory(prefix="latentq-scaleout-") as folder:
        rows = run_all(args, args.state or Path(folder), threads_of)
    machine = platform.processor() or platform.machine()
    result = {
        "benchmark": "scaleout",
        "machine": f"{machine}, {cores} cores, Python {platform.python_version()}",
        "job": BODY, "clients": args.clients, "seconds": args.seconds, "warmup_s": args.warmup_s,
        "max_batch": args.max_batch, "thread_variables": list(THREAD_VARIABLES),
        "torch_threads_seen": torch_threads, "rows": rows,
    }  # fmt: skip
    print(table(rows, torch_threads))
    for row in rows:
        if "mixed" in row:
            print(f"two models, executions per model and worker: {row['proofs']['executions_by_model']}")
        if row["stop_exits"]:
            print(f"exits other than 0 after SIGTERM ({row['workers']} workers): {row['stop_exits']}")
        if row["proofs"]["problems"]:
            print(f"problems ({row['workers']} workers):", json.dumps(row["proofs"]["problems"], indent=2))
    write_result(args.json, result)
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
