"""The harness's own stack (Redis with its AOF, S3, the API, workers, the dispatcher) and the
webhook receiver; processes it kills are replaced through it."""

from __future__ import annotations

import collections
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from redis import Redis

from bench.overhead import tiny_stack
from latentq.keys import LEASE_HOLDERS, job_key
from latentq_dev.devstack import Process, RedisServer, S3Server, free_port, wait_until

TERMINAL = ("succeeded", "failed", "canceled")
BUCKET = "chaos"
#: Seconds the receiver holds a delivery to a slow path (so the dispatcher can die mid-attempt).
SLOW_RECEIVER_S = 1.5


class Receiver:
    """A webhook receiver on 127.0.0.1 logging every delivery; paths under ``/slow/`` answer late."""

    def __init__(self) -> None:
        self.log: list[dict] = []
        self.in_flight = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                with receiver.lock:
                    receiver.in_flight += 1
                try:
                    if self.path.startswith("/slow/"):
                        time.sleep(SLOW_RECEIVER_S)
                    payload = json.loads(body)
                    entry = {"id": self.headers.get("webhook-id"), "type": payload["type"],
                             "job": payload["data"]["id"], "status": payload["data"]["status"]}  # fmt: skip
                    with receiver.lock:
                        receiver.log.append(entry)
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                finally:
                    with receiver.lock:
                        receiver.in_flight -= 1

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def completed(self) -> dict[str, list[dict]]:
        """The ``job.completed`` deliveries received, per job id."""
        with self.lock:
            entries = [entry for entry in self.log if entry["type"] == "job.completed"]
        by_job: dict[str, list[dict]] = collections.defaultdict(list)
        for entry in entries:
            by_job[entry["job"]].append(entry)
        return by_job


class Stack:
    """The harness's own stack; processes it kills are replaced through it."""

    def __init__(self, state: Path, workers: int, receiver: Receiver) -> None:
        self.state = state
        self.processes: list[Process] = []  # API, dispatcher(s), workers: all stopped at the end
        self.workers: list[Process] = []
        self.generation = 0
        self.receiver = receiver
        #: Names of the processes the harness stopped itself; any other exit is unexpected.
        self.stopped_on_purpose: set[str] = set()
        #: "name: exit code" of each process that exited on its own (each was replaced).
        self.unexpected_exits: list[str] = []
        #: The last lines each of those logged, for the report.
        self.exit_logs: dict[str, list[str]] = {}
        self._supervising = threading.Event()
        self.model_dir, env = tiny_stack(
            state, LATENTQ_WORKER_LOST_S="3", LATENTQ_HEARTBEAT_INTERVAL_S="1",
            LATENTQ_MAX_BATCH="4", LATENTQ_WARMUP="false", LATENTQ_DRAIN_TIMEOUT_S="30",
            LATENTQ_PROGRESS_INTERVAL_S="0.5", LATENTQ_WEBHOOK_ALLOWED_HOSTS="127.0.0.1",
            LATENTQ_WEBHOOK_RETRY_SCHEDULE_S="1,2,4,8", LATENTQ_WEBHOOK_TIMEOUT_S="3",
            OMP_NUM_THREADS="1",  # several workers share few cores: one sampling thread each
        )  # fmt: skip
        self.redis_server = RedisServer(state / "redis", durable=True)
        self.s3 = S3Server(state / "s3")
        try:
            self._start(env, workers, receiver)
        except BaseException:
            self.stop()
            raise

    def _start(self, env: dict[str, str], workers: int, receiver: Receiver) -> None:
        self.redis_server.start()
        self.s3.start(BUCKET)
        env.update(self.s3.env(BUCKET), LATENTQ_REDIS_URL=self.redis_server.url)
        self.env = env
        self.redis = Redis.from_url(self.redis_server.url)
        self.port = free_port()
        api_argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                    "--port", str(self.port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
        self.api = Process.start("api", api_argv, self.state / "logs" / "api.log", env)
        self.processes.append(self.api)
        self.dispatcher = self.start_dispatcher()
        for _ in range(workers):
            self.start_worker()
        ready = lambda: httpx.get(f"{self.base_url}/readyz", timeout=2).status_code == 200  # noqa: E731
        wait_until(ready, 180, "the API and a worker", self.api)
        threading.Thread(target=self._supervise, daemon=True).start()

    def _supervise(self) -> None:
        """Replace a worker or dispatcher that exits on its own, as an orchestrator would (noted)."""
        while not self._supervising.wait(0.5):
            for process in [*self.workers, self.dispatcher]:
                code = process.popen.poll()
                if code is None or process.name in self.stopped_on_purpose:
                    continue
                self.stopped_on_purpose.add(process.name)
                self.unexpected_exits.append(f"{process.name}: {code}")
                lines = process.log_path.read_text(errors="replace").splitlines()
                self.exit_logs[process.name] = lines[-40:]
                if process is self.dispatcher:
                    self.dispatcher = self.start_dispatcher()
                else:
                    self.start_worker()

    def signal(self, process: Process, sig: int) -> None:
        """Send ``sig`` to ``process`` (not an unexpected exit, then)."""
        self.stopped_on_purpose.add(process.name)
        process.popen.send_signal(sig)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start_dispatcher(self) -> Process:
        """Start the webhook dispatcher (again)."""
        self.generation += 1
        name = f"chaos-dispatcher-{self.generation}"
        process = Process.start(name, [sys.executable, "-m", "dispatcher"],
                                self.state / "logs" / f"{name}.log", self.env)  # fmt: skip
        self.processes.append(process)
        return process

    def start_worker(self) -> Process:
        """Start one more worker (a new name: RQ's registration of the old one may linger)."""
        self.generation += 1
        name = f"chaos-worker-{self.generation}"
        env = {**self.env, "LATENTQ_WORKER_NAME": name}
        process = Process.start(
            name, [sys.executable, "-m", "worker"], self.state / "logs" / f"{name}.log", env
        )
        self.workers.append(process)
        self.processes.append(process)
        return process

    def live_workers(self) -> list[Process]:
        return [process for process in self.workers if process.popen.poll() is None]

    def holdings(self) -> dict[str, list[str]]:
        """Job ids per lease holder (worker name), as Redis has them now."""
        held: dict[str, list[str]] = collections.defaultdict(list)
        for job_id, holder in self.redis.hgetall(LEASE_HOLDERS).items():
            held[holder.decode()].append(job_id.decode())
        return held

    def stop(self) -> None:
        self._supervising.set()
        self.stopped_on_purpose.update(process.name for process in self.processes)
        for process in self.processes:
            process.stop(deadline_s=10)
        self.s3.stop()
        self.redis_server.stop()


def statuses(stack: Stack, job_ids: list[str]) -> list[str | None]:
    """The status each job's record has now (None: no record)."""
    with stack.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "status")
        return [status.decode() if status else None for status in pipe.execute()]
