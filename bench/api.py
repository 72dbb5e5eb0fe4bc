"""How fast the API accepts jobs: ``POST /v1/generate`` with no worker running, under wrk.

A private Redis, the API under uvicorn with 1 and then 2 processes on loopback, and ``wrk``
(``apt-get install wrk``) posting a 64x64, 20-step job with a bounded number of connections for
a fixed time. Reports accepted jobs/s and latency percentiles. Every accepted job is a real RQ job
with its record, queued for a worker that never comes.

Each process count is measured with a bootstrap key (checked in process, no limits) and with a
managed key (looked up through the keyring's cache, counted by the rate limiter and the job cap,
both set high enough never to refuse), side by side in the order bootstrap, managed, managed,
bootstrap, each run on an emptied Redis (so neither kind gains from going first on an empty
one): the cost of accounts on the submit path, as the mean of each kind's two runs.

    .venv/bin/python -m bench.api [--seconds 15] [--connections 32] [--json bench/results/api.json]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from redis import Redis

from bench import KEY, running_api, service_env, write_result
from latentq.accounts import Accounts
from latentq.fair_share import waiting
from latentq.keys import queue_name
from latentq_dev.devstack import RedisServer

BODY = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 20}
SCRIPT = """wrk.method = "POST"
wrk.body = '{body}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
"""
#: The runs of each process count, in this order: each kind runs once before and once after the other.
ORDER = ("bootstrap", "managed", "managed", "bootstrap")
_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str) -> dict[str, float]:
    """Return requests/s, non-2xx count and latency percentiles (ms) from ``wrk --latency`` output."""
    result = {"requests_per_s": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1))}  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    result["non_2xx"] = float(errors.group(1)) if errors else 0.0
    for percent, value, unit in re.findall(
        r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE
    ):
        result[f"p{percent}_ms"] = round(float(value) * _UNITS[unit], 2)
    return result


def managed_key(redis_url: str) -> str:
    """Make an account whose limits never refuse during the run, and a key of it; return the key."""
    accounts = Accounts(Redis.from_url(redis_url))
    accounts.create_account("bench", "bench", unlimited=True)
    accounts.set_limits("bench", "bench", rate_limit=10**9, rate_period_s=1.0, max_jobs=10**9)
    return accounts.create_key("bench", "generate,read", "bench")[1]


def measure(
    redis_url: str,
    processes: int,
    seconds: int,
    connections: int,
    folder: Path,
    key: str = KEY,
    **settings: str,
) -> dict[str, float]:
    """Run the API with ``processes`` uvicorn workers (and ``LATENTQ_*`` ``settings``) under wrk;
    return wrk's figures."""
    script = folder / "post.lua"
    script.write_text(SCRIPT.format(body=json.dumps(BODY), key=key))
    env = service_env(redis_url, LATENTQ_MAX_QUEUE_DEPTH=str(10**9), **settings)
    with running_api(env, folder / f"api-{processes}.log", processes) as port:
        url = f"http://127.0.0.1:{port}/v1/generate"
        subprocess.run(["wrk", "-t2", "-c8", "-d2s", "-s", str(script), url], check=True, capture_output=True)
        output = subprocess.run(
            ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(script), url],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    return {"processes": processes, **parse_wrk(output)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench.api needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        redis = RedisServer(Path(temp) / "redis").start()
        try:
            client = Redis.from_url(redis.url)
            for processes in (1, 2):
                for kind in ORDER:
                    client.flushall()
                    key = managed_key(redis.url) if kind == "managed" else KEY
                    row = {"key": kind, **measure(redis.url, processes, args.seconds, args.connections,
                                                  Path(temp), key)}  # fmt: skip
                    queued = waiting(client, queue_name("tiny-sd"))  # in RQ's queue and held back
                    print(f"{processes} API process(es), {kind} key: {row} ({queued} jobs queued)")
                    rows.append(row)
                means = {kind: statistics.mean(row["requests_per_s"] for row in rows
                                               if row["key"] == kind and row["processes"] == processes)
                         for kind in set(ORDER)}  # fmt: skip
                change = means["managed"] / means["bootstrap"] - 1
                print(
                    f"{processes} API process(es): bootstrap {means['bootstrap']:.0f} jobs/s, "
                    f"managed {means['managed']:.0f} jobs/s ({change:+.1%})"
                )
        finally:
            redis.stop()
    write_result(args.json, {"benchmark": "api", "job": BODY, "connections": args.connections, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
