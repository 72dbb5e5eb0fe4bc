"""The prepared device check: every GPU figure the project needs, in one time-boxed command.

Each stage runs as its own process (its own process group) under its own time limit, and the
whole run under ``--total`` seconds: a stage that fails, crashes the interpreter or hangs is
recorded (``status`` ``failed``/``timeout``, its exit code, its seconds) and the next one runs; a
stage whose budget no longer fits in what is left is recorded as ``skipped``. Every row, the
stages' own and one per stage from this runner, is appended to ``OUT/check.jsonl`` as it is
made; every stage's output goes to ``OUT/check.log``. The stages, in order:

``env`` versions (Python, torch, CUDA, cuDNN, driver, GPU, diffusers, transformers, peft);
``pytest`` the GPU-marked tests; ``embedded`` finite, non-constant output of every embedded model
on CUDA fp16 (bf16: SD3, FLUX) against fp32; ``memory`` the worker's memory estimate against
measured peaks at 1/2/4/8 images of 512x512; ``channels_last`` seconds a UNet step with and
without; ``bench_gpu`` ``bench.gpu --batches 1 8``; ``flow_gpu`` FLUX.1-dev and SD3.5 Large in
bf16 at 1024x1024; ``compile`` (last, if time remains) recompiles across sizes, cfg and prompt
lengths with ``TORCH_LOGS=recompiles``.

    python3 -m bench.gpu_check --out "$OUT"            # on a lent GPU (docs/BENCHMARKS.md)
    .venv/bin/python -m bench.gpu_check --dry-run --out /tmp/check   # every stage, CPU, tiny sizes
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from bench import append_row

#: Seconds the whole check may take by default: a device command may run 600 s, and a second
#: try must still fit in the 15 minutes a task is lent a device for.
TOTAL_SECONDS = 480.0
#: How much longer each limit is in a dry run: the CPU of a development machine (2 cores, shared)
#: builds and runs the tiny models far slower than a GPU host runs the real ones.
DRY_RUN_SLOWER = 5


@dataclass(frozen=True)
class Stage:
    """One time-boxed step of the check: a command and its limit, seconds."""

    name: str
    budget_s: float
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)


def stages(rows: Path, dry_run: bool) -> list[Stage]:
    """Return the check's stages, writing their rows to ``rows`` (tiny, on CPU, when ``dry_run``)."""
    python = sys.executable
    cpu = ["--dry-run"] if dry_run else []
    scale = DRY_RUN_SLOWER if dry_run else 1
    own = lambda name: [python, "-m", "bench.gpu_stages", name, "--out", str(rows), *cpu]  # noqa: E731
    tiny = ["--device", "cpu", "--tiny", "--side", "64", "--steps", "1"]
    bench_gpu = [*tiny, "--batches", "1"] if dry_run else ["--batches", "1", "8", "--steps", "10"]
    flow_gpu = tiny if dry_run else ["--steps", "2"]
    return [
        Stage("env", 30 * scale, own("env")),
        Stage("pytest", 90 * scale, own("pytest")),
        Stage("embedded", 75 * scale, own("embedded")),
        Stage("memory", 50 * scale, own("memory")),
        Stage("channels_last", 40 * scale, own("channels_last")),
        Stage("bench_gpu", 90 * scale, [python, "-m", "bench.gpu", *bench_gpu, "--jsonl", str(rows)]),
        Stage("flow_gpu", 60 * scale, [python, "-m", "bench.flow_gpu", *flow_gpu, "--jsonl", str(rows)]),
        Stage("compile", 50 * scale, own("compile"), {"TORCH_LOGS": "recompiles"}),
    ]


def run_stage(stage: Stage, budget_s: float, log_path: Path) -> dict:
    """Run ``stage`` for at most ``budget_s`` seconds, its output appended to ``log_path``; return
    its row. On time-out its whole process group is killed (pytest's children, compile workers)."""
    started = time.monotonic()
    with log_path.open("a") as log:
        log.write(f"\n===== stage {stage.name} (budget {budget_s:.0f} s): {' '.join(stage.argv)}\n")
        log.flush()
        process = subprocess.Popen(
            stage.argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **stage.env},
        )  # fmt: skip
        try:
            code: int | None = process.wait(timeout=budget_s)
            status = "ok" if code == 0 else "failed"
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            code, status = None, "timeout"
    seconds = round(time.monotonic() - started, 1)
    return {
        "stage": stage.name,
        "status": status,
        "returncode": code,
        "seconds": seconds,
        "budget_s": budget_s,
    }


def run_stages(plan: list[Stage], out: Path, total_s: float) -> list[dict]:
    """Run each stage of ``plan`` in turn within ``total_s`` seconds; return (and append to
    ``out/check.jsonl``) one row per stage."""
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + total_s
    print(f"stage budget (total {total_s:.0f} s): "
          + ", ".join(f"{stage.name} {stage.budget_s:.0f} s" for stage in plan), flush=True)  # fmt: skip
    results = []
    for stage in plan:
        left = deadline - time.monotonic()
        if stage.budget_s > left:
            row = {"stage": stage.name, "status": "skipped", "budget_s": stage.budget_s,
                   "message": f"{left:.0f} s left of the total"}  # fmt: skip
        else:
            row = run_stage(stage, stage.budget_s, out / "check.log")
        results.append({"check": "stage", **row})
        append_row(out / "check.jsonl", results[-1])
        print(results[-1], flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the check; exit 0 when every stage that ran finished with status ok."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/results/gpu_check"),
                        help="folder for check.jsonl and check.log (on a lent device: $OUT)")  # fmt: skip
    parser.add_argument("--dry-run", action="store_true", help="every stage on CPU with tiny sizes")
    parser.add_argument(
        "--total",
        type=float,
        help=f"seconds for the whole check (default {TOTAL_SECONDS:.0f}; x{DRY_RUN_SLOWER} in a dry run)",
    )
    parser.add_argument("--stages", nargs="+", help="only these stages (by name)")
    args = parser.parse_args(argv)
    plan = [stage for stage in stages(args.out / "check.jsonl", args.dry_run)
            if not args.stages or stage.name in args.stages]  # fmt: skip
    total = args.total or TOTAL_SECONDS * (DRY_RUN_SLOWER if args.dry_run else 1)
    results = run_stages(plan, args.out, total)
    return 0 if all(row["status"] in ("ok", "skipped") for row in results) else 1


if __name__ == "__main__":
    sys.exit(main())
