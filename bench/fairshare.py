"""Fair share: how long a light account's job waits behind a heavy account's backlog.

A local stack (Redis, S3, the API, one batching worker on the embedded ``tiny-sd``) with two
accounts. The heavy one keeps ``--backlog`` jobs queued all along (topped up as they run); the
light one submits one job every ``--every-s`` seconds. Both submit the same small job, so rounds
may mix them. For each light job: its wait from submit to start, in seconds and in rounds (the
jobs that started in between over the worker's batch size). The stack runs twice, side by side:
with fair share (``LATENTQ_FAIR_QUEUE_DEPTH``, default 8) and without (0: one FIFO queue).

    .venv/bin/python -m bench.fairshare [--backlog 500] [--light 6] [--every-s 3] [--depth 8 16] [--json F]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from redis import Redis

from bench import write_result
from bench.overhead import tiny_stack
from latentq.accounts import Accounts
from latentq.keys import job_key
from latentq_dev.devrun import start_stack, stop_all
from latentq_dev.devstack import free_port

JOB = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4}
MAX_BATCH = 8


def account_key(redis: Redis, name: str) -> str:
    """Make an account whose limits never refuse during the run; return a key of it."""
    accounts = Accounts(redis)
    accounts.create_account(name, "bench", unlimited=True)
    accounts.set_limits(name, "bench", rate_limit=10**9, rate_period_s=1.0, max_jobs=10**9)
    return accounts.create_key(name, "generate,read", "bench")[1]


def started_at(redis: Redis, job_ids: list[str]) -> dict[str, float]:
    """Return when each of ``job_ids`` started (Unix seconds), for those that did."""
    with redis.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hget(job_key(job_id), "started_at")
        values = pipeline.execute()
    return {
        job_id: datetime.fromisoformat(value.decode().replace("Z", "+00:00")).timestamp()
        for job_id, value in zip(job_ids, values, strict=True)
        if value
    }


def run(depth: int, backlog: int, light_jobs: int, every_s: float) -> dict[str, Any]:
    """Run one stack with fair-share depth ``depth``; return the light jobs' waits."""
    with tempfile.TemporaryDirectory(prefix="latentq-fair-") as temp:
        state = Path(temp)
        _, env = tiny_stack(state, LATENTQ_FAIR_QUEUE_DEPTH=str(depth), LATENTQ_MAX_BATCH=str(MAX_BATCH),
                            LATENTQ_WARMUP="false", LATENTQ_BATCH_WAIT_MS="0")  # fmt: skip
        port, started = free_port(), []
        try:
            start_stack(state, env, port, started, access_log=False)
            redis = Redis.from_url(env["LATENTQ_REDIS_URL"])
            heavy, light = account_key(redis, "heavy"), account_key(redis, "light")
            base = f"http://127.0.0.1:{port}"
            heavy_ids: list[str] = []
            stop = threading.Event()

            def keep_backlog() -> None:
                with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {heavy}"}) as client:
                    while not stop.is_set():
                        waiting = len(heavy_ids) - len(started_at(redis, heavy_ids))
                        for _ in range(max(0, backlog - waiting)):
                            heavy_ids.append(client.post("/v1/generate", json=JOB).json()["id"])
                        stop.wait(0.5)

            feeder = threading.Thread(target=keep_backlog, daemon=True)
            feeder.start()
            deadline = time.monotonic() + 60
            while len(heavy_ids) < backlog and time.monotonic() < deadline:
                time.sleep(0.1)
            submitted: dict[str, float] = {}
            with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {light}"}) as client:
                for _ in range(light_jobs):
                    time.sleep(every_s)
                    answer = client.post("/v1/generate", json=JOB).json()
                    submitted[answer["id"]] = time.time()
                deadline = time.monotonic() + 900
                while len(started_at(redis, list(submitted))) < light_jobs and time.monotonic() < deadline:
                    time.sleep(0.2)
            stop.set()
            feeder.join(10)
            light_started = started_at(redis, list(submitted))
            heavy_started = sorted(started_at(redis, heavy_ids).values())
        finally:
            stop_all(started)
    waits, rounds = [], []
    for job_id, at in submitted.items():
        began = light_started.get(job_id)
        if began is None:
            continue
        waits.append(began - at)
        rounds.append(sum(at <= moment < began for moment in heavy_started) / MAX_BATCH)
    # The heavy account's throughput over the light jobs' window: what fair share costs the stack.
    window = (min(submitted.values()), max(light_started.values()))
    heavy_in_window = sum(window[0] <= moment < window[1] for moment in heavy_started)
    return {
        "fair_queue_depth": depth,
        "heavy_jobs_per_s": round(heavy_in_window / (window[1] - window[0]), 1),
        "light_jobs": len(waits),
        "wait_p50_s": round(statistics.median(waits), 2),
        "wait_p95_s": round(sorted(waits)[max(0, round(0.95 * len(waits)) - 1)], 2),
        "rounds_p50": round(statistics.median(rounds), 1),
        "rounds_p95": round(sorted(rounds)[max(0, round(0.95 * len(rounds)) - 1)], 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backlog", type=int, default=500)
    parser.add_argument("--light", type=int, default=6)
    parser.add_argument("--every-s", type=float, default=3.0)
    parser.add_argument("--depth", type=int, nargs="+", default=[8],
                        help="LATENTQ_FAIR_QUEUE_DEPTH of each fair run, after the FIFO one")  # fmt: skip
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    for depth in (0, *args.depth):
        row = run(depth, args.backlog, args.light, args.every_s)
        print(
            ("FIFO (fair share off)" if depth == 0 else f"fair share, depth {depth}") + f": {row}", flush=True
        )
        rows.append(row)
    write_result(args.json, {"benchmark": "fairshare", "job": JOB, "backlog": args.backlog, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
