"""What Prometheus metrics cost the submit path: ``POST /v1/generate`` with ``LATENTQ_METRICS`` on
and off, side by side.

``bench.api``'s measurement (a private Redis, the API under uvicorn on loopback, ``wrk`` posting a
64x64, 20-step job for a fixed time, no worker). With metrics on, each request goes through the
HTTP metrics middleware (a counter and a histogram) and each submit adds to one more counter; off,
the API has neither (nor ``/metrics``). Nothing scrapes during the runs: a scrape every 15 s
costs the API one small render and three pipelined Redis reads, not a per-request cost. Each
process count runs on, off, off, on, each on an emptied Redis (so neither gains from its
position), after a 5 s run that is not counted, and the mean of each setting's two runs is
compared: the issue's bound is 5 %.

    .venv/bin/python -m bench.metrics [--seconds 15] [--connections 32] [--processes 1,2] \\
        [--managed] [--json bench/results/metrics.json]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from redis import Redis

from bench import KEY, write_result
from bench.api import BODY, managed_key, measure
from latentq_dev.devstack import RedisServer

#: The runs of each process count, in this order: each setting runs once before and once after the other.
ORDER = ("on", "off", "off", "on")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=15)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--processes", default="1,2", help="API process counts, comma-separated")
    parser.add_argument(
        "--managed", action="store_true", help="a managed key (rate-checked) not a bootstrap one"
    )
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        print("bench.metrics needs wrk: apt-get install wrk", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        redis = RedisServer(Path(temp) / "redis").start()
        try:
            client = Redis.from_url(redis.url)
            # Not counted: the first run after start-up was slow whatever its setting (one run here:
            # 1,806 jobs/s against 2,603 for the same setting's second run).
            measure(redis.url, 1, 5, args.connections, Path(temp), KEY)
            for processes in [int(count) for count in args.processes.split(",")]:
                for setting in ORDER:
                    client.flushall()
                    key = managed_key(redis.url) if args.managed else KEY
                    figures = measure(redis.url, processes, args.seconds, args.connections, Path(temp), key,
                                      LATENTQ_METRICS="true" if setting == "on" else "false")  # fmt: skip
                    row = {"metrics": setting, **figures}
                    print(f"{processes} API process(es), metrics {setting}: {row}")
                    rows.append(row)
                means = {
                    setting: statistics.mean(
                        row["requests_per_s"] for row in rows[-len(ORDER) :] if row["metrics"] == setting
                    )
                    for setting in set(ORDER)
                }
                ratio = means["on"] / means["off"]
                print(
                    f"{processes} API process(es): metrics on {means['on']:.0f} jobs/s, "
                    f"off {means['off']:.0f} jobs/s, on/off {ratio:.3f} ({ratio - 1:+.1%})"
                )
        finally:
            redis.stop()
    result = {"benchmark": "metrics", "job": BODY, "connections": args.connections, "managed": args.managed}
    write_result(args.json, {**result, "rows": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
