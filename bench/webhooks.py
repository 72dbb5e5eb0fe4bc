"""What webhooks cost the GPU worker, and how fast one dispatcher delivers.

1. Worker side, side by side in one run on a private Redis: the record writes of one job's life
   (``mark_running``, 20 ``step`` calls, ``mark_succeeded``) for jobs without a webhook, with one for
   ``started`` and ``completed``, and with one for every event with progress sent at every step
   (the worst case; the default sends one every 2 s), interleaved.
2. Delivery: ``--deliveries`` finished jobs with a ``completed`` webhook, then 1 and 2 dispatcher
   processes (``python -m dispatcher``) deliver them to a local HTTP receiver (answers
   204); deliveries per second, first to last.

    .venv/bin/python -m bench.webhooks [--jobs 200] [--deliveries 500] [--json bench/results/webhooks.json]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from redis import Redis

from bench import service_env, write_result
from latentq.contract import JobSpec, WebhookTarget, WeightedPrompt
from latentq.records import JobRecords
from latentq_dev.devstack import Process, RedisServer, wait_until

STEPS = 20


def spec(webhook: WebhookTarget | None) -> JobSpec:
    return JobSpec(
        job_id=str(uuid.uuid4()), model="tiny-sd", prompts=[WeightedPrompt(text="a", weight=1.0)],
        width=64, height=64, steps=STEPS, cfg_scale=7.0, samples=1, seed=1, sampler="K_EULER",
        webhook=webhook,
    )  # fmt: skip


def job_life(records: JobRecords, redis: Redis, webhook: WebhookTarget | None) -> float:
    """Create a job, then time the worker's writes over its life; return milliseconds. Progress is
    written (and, if the webhook wants it, sent) at every step."""
    job = spec(webhook)
    with redis.pipeline() as pipeline:
        records.create(job, pipeline, owner="bench")
        pipeline.execute()
    started = time.perf_counter()
    records.mark_running(job)
    for step in range(1, STEPS + 1):
        notify = webhook is not None and "progress" in webhook.events and step < STEPS
        records.progress(job.job_id, step, STEPS, publish=True, notify=notify)
    records.mark_succeeded(job, [], {})
    return (time.perf_counter() - started) * 1000


class Receiver:
    """A local HTTP server answering 204 and counting requests with their arrival times."""

    def __init__(self) -> None:
        self.times: list[float] = []
        times = self.times

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                self.send_response(204)
                self.end_headers()
                times.append(time.perf_counter())

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"


def delivery_rate(
    records: JobRecords, redis_url: str, receiver: Receiver, count: int, dispatchers: int, logs: Path
):
    """Queue ``count`` completed deliveries, run ``dispatchers`` processes; return deliveries/s."""
    target = WebhookTarget(url=receiver.url, events=["completed"])
    for _ in range(count):
        job = spec(target)
        with records.redis.pipeline() as pipeline:
            records.create(job, pipeline, owner="bench")
            pipeline.execute()
        records.mark_succeeded(job, [], {})
    receiver.times.clear()
    env = service_env(redis_url, LATENTQ_WEBHOOK_ALLOWED_HOSTS="127.0.0.1")
    processes = [
        Process.start(f"dispatcher-{n}", [sys.executable, "-m", "dispatcher"], logs / f"d{n}.log", env)
        for n in range(dispatchers)
    ]
    try:
        wait_until(lambda: len(receiver.times) >= count, 300, f"{count} deliveries")
    finally:
        for process in processes:
            process.stop()
    return (count - 1) / (receiver.times[count - 1] - receiver.times[0])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--deliveries", type=int, default=500)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        server = RedisServer(Path(temp) / "redis").start()
        try:
            redis = Redis.from_url(server.url)
            records = JobRecords(redis, 3600)
            url = "http://127.0.0.1:9/hook"
            variants = {
                "no webhook": None,
                "started+completed": WebhookTarget(url=url, events=["started", "completed"]),
                "all, progress every step": WebhookTarget(
                    url=url, events=["started", "progress", "completed"]
                ),
            }
            times: dict[str, list[float]] = {name: [] for name in variants}
            for _ in range(args.jobs):
                for name, hook in variants.items():
                    times[name].append(job_life(records, redis, hook))
            redis.flushdb()  # this private server's: the deliveries above go nowhere
            worker = {name: round(statistics.median(values), 2) for name, values in times.items()}
            print(f"worker's record writes over a {STEPS}-step job, median ms: {worker}")
            receiver = Receiver()
            rates = {}
            for dispatchers in (1, 2):
                rate = delivery_rate(records, server.url, receiver, args.deliveries, dispatchers, Path(temp))
                rates[str(dispatchers)] = round(rate, 1)
                print(f"{dispatchers} dispatcher(s): {rate:.1f} deliveries/s")
        finally:
            server.stop()
    write_result(args.json, {"benchmark": "webhooks", "worker": worker, "deliveries_per_s": rates})
    return 0


if __name__ == "__main__":
    sys.exit(main())
