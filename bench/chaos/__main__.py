"""``python -m bench.chaos``: run the harness (see the package docstring)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import bench.chaos
from bench import write_result
from bench.chaos.clients import Outcome, plan_jobs, run_clients
from bench.chaos.faults import Faults, run_faults
from bench.chaos.reconcile import reconcile, wait_until_settled
from bench.chaos.stack import Receiver, Stack


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the harness; print the reconciliation; write JSON if asked; exit 1 on any loss."""
    parser = argparse.ArgumentParser(description=bench.chaos.__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--kills", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rate", type=float, default=30.0, help="submits per second, all clients together")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--deadline-s", type=float, default=180.0, help="most seconds to wait for the end")
    parser.add_argument(
        "--state", type=Path, help="keep the stack's files and logs here (default: a temporary folder)"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _interrupt)  # stopped from outside: the stack is still stopped
    receiver = Receiver()
    with tempfile.TemporaryDirectory(prefix="latentq-chaos-") as folder:
        stack = Stack(args.state or Path(folder), args.workers, receiver)
        try:
            jobs = plan_jobs(args.jobs, rng, receiver.port)
            outcome, faults = Outcome(), Faults()
            stop_faults = threading.Event()
            fault_thread = threading.Thread(
                target=run_faults, args=(stack, args.kills, outcome, args.jobs, faults, stop_faults, rng)
            )
            began = time.monotonic()
            fault_thread.start()
            run_clients(stack.base_url, jobs, args.clients, args.rate, outcome)
            submitted_s = time.monotonic() - began
            fault_thread.join(timeout=args.deadline_s)
            stop_faults.set()
            fault_thread.join()
            webhooks = {job_id: "webhook_url" in job.body for job_id, job in outcome.planned.items()}
            wait_until_settled(stack, outcome, webhooks, time.monotonic() + args.deadline_s)
            result = reconcile(stack, outcome, webhooks, faults)
        finally:
            stack.stop()
            receiver.server.shutdown()
    result.update(
        refused=dict(outcome.refused), gave_up=outcome.gave_up, server_errors=outcome.server_errors,
        cancels_answered=len(outcome.cancels), kills=len(faults.kills),
        unexpected_exits=stack.unexpected_exits,
        exit_logs=stack.exit_logs,
        kills_on_claim=sum(kill["claim"] for kill in faults.kills), sigterm_exit=faults.sigterm_exit,
        redis_down_s=round(faults.redis_down_s, 1), s3_down_s=round(faults.s3_down_s, 1),
        dispatcher_killed_in_flight=faults.dispatcher_killed_in_flight, faults_missed=faults.missed,
        submit_s=round(submitted_s, 1),
        total_s=round(time.monotonic() - started, 1), faults=faults.log,
        machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
    )  # fmt: skip
    print(json.dumps({key: value for key, value in result.items() if key != "problems"}, indent=2))
    if result["problems"]:
        print("problems:", json.dumps(result["problems"], indent=2))
    write_result(args.json, result)
    bad = ("lost", "duplicated", "stuck", "orphaned_objects", "left_in_rq", "webhooks_missing", "read_errors",
           "server_errors", "gave_up", "unexpected_exits", "faults_missed")  # fmt: skip
    return 1 if any(result[name] for name in bad) or faults.sigterm_exit not in (0, None) else 0


if __name__ == "__main__":
    sys.exit(main())
