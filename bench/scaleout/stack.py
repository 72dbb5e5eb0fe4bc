"""The bench's stack: one Redis, one SeaweedFS S3 and one API process (uvicorn, one process) for the
whole run, and sets of worker processes started and stopped around them (each with its torch
threads set)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
from redis import Redis

from bench.overhead import tiny_stack
from latentq.keys import worker_alive_key
from latentq_dev.devstack import Process, ProcessExited, RedisServer, S3Server, free_port, wait_until

BUCKET = "scaleout"
#: Seconds a set of workers may take to load, warm up and register (several start at once on few cores).
WORKERS_READY_S = 600.0
#: Seconds a stopped worker gets to drain (finish its round and uploads) before it is killed.
WORKER_STOP_S = 60.0
#: The thread-count variables a worker's torch (and the BLAS under it) reads at start-up.
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def machine_cores() -> int:
    """Return the cores this process may run on (its CPU affinity, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_per_worker(workers: int, cores: int) -> int:
    """Return the torch threads each of ``workers`` processes gets on ``cores`` cores: an even share,
    at least one (four workers on two cores each get one, and share them two to a core)."""
    return max(1, cores // workers)


def torch_threads_under(threads: int) -> int:
    """Return ``torch.get_num_threads()`` as a fresh interpreter with the workers' thread variables
    set to ``threads`` sees it: the proof that the setting reaches torch."""
    env = {**os.environ, **dict.fromkeys(THREAD_VARIABLES, str(threads))}
    answer = subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                            env=env, capture_output=True, text=True, check=True, timeout=120)  # fmt: skip
    return int(answer.stdout.strip())


class Stack:
    """Redis, S3 and the API, started once; ``start_workers`` / ``stop_workers`` around them."""

    def __init__(self, state: Path, max_batch: int, models: tuple[str, ...] = ("tiny-sd",)) -> None:
        self.state = state
        self.workers: list[Process] = []
        #: Worker name -> the models it serves, for every worker the run started.
        self.served: dict[str, tuple[str, ...]] = {}
        self.generation = 0
        self._closing = ExitStack()
        model_dir, self.env = tiny_stack(
            state, LATENTQ_MAX_BATCH=str(max_batch), LATENTQ_HEARTBEAT_INTERVAL_S="2",
            LATENTQ_WORKER_LOST_S="10", LATENTQ_DRAIN_TIMEOUT_S=str(WORKER_STOP_S - 10),
        )  # fmt: skip
        self._build_models(model_dir.parent, models)
        try:
            self.redis_server = RedisServer(state / "redis")
            self._closing.callback(self.redis_server.stop)
            self.redis_server.start()
            self.s3 = S3Server(state / "s3")
            self._closing.callback(self.s3.stop)
            self.s3.start(BUCKET)
            self.env.update(self.s3.env(BUCKET), LATENTQ_REDIS_URL=self.redis_server.url)
            self.redis = Redis.from_url(self.redis_server.url)
            self.port = free_port()
            argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--host", "127.0.0.1",
                    "--port", str(self.port), "--no-access-log", "--log-level", "warning"]  # fmt: skip
            self.api = Process.start("api", argv, state / "logs" / "api.log", self.env)
            self._closing.callback(self.api.stop)
            healthy = lambda: httpx.get(f"{self.base_url}/healthz").status_code == 200  # noqa: E731
            wait_until(healthy, 60, "the API", self.api)
        except BaseException:
            self._closing.close()
            raise

    @staticmethod
    def _build_models(folder: Path, models: tuple[str, ...]) -> None:
        """Build the embedded models the workers will load, once, before any starts (workers that
        build the same model at once would race on its folder)."""
        from worker.embedded.models import ensure_tiny_model

        for name in models:
            ensure_tiny_model(folder / name, name)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def process_groups(self) -> dict[str, list[int]]:
        """Return the pids of each kind of process the stack runs (the workers now running)."""
        servers = {"redis": self.redis_server.process, "s3": self.s3.process}
        groups = {name: [process.popen.pid] for name, process in servers.items() if process is not None}
        return {
            "workers": [process.popen.pid for process in self.workers],
            "api": [self.api.popen.pid],
            **groups,
        }

    def start_workers(self, models: list[tuple[str, ...]], threads: int) -> list[str]:
        """Start one worker per entry of ``models`` (the models it serves), each with ``threads``
        torch threads; wait until all have warmed up and beat; return their names."""
        names = []
        for served in models:
            self.generation += 1
            name = f"scaleout-worker-{self.generation}"
            env = {**self.env, "LATENTQ_WORKER_NAME": name, "LATENTQ_WORKER_MODELS": ",".join(served),
                   **dict.fromkeys(THREAD_VARIABLES, str(threads))}  # fmt: skip
            process = Process.start(name, [sys.executable, "-m", "worker"],
                                    self.state / "logs" / f"{name}.log", env)  # fmt: skip
            self.workers.append(process)
            self.served[name] = served
            names.append(name)
        deadline = time.monotonic() + WORKERS_READY_S
        for process in self.workers:
            while not self.redis.exists(worker_alive_key(process.name)):
                if process.popen.poll() is not None:
                    raise ProcessExited(f"worker {process.name}", process)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"worker {process.name} not ready within {WORKERS_READY_S:.0f} s")
                time.sleep(0.2)
        return names

    def stop_workers(self) -> list[str]:
        """Stop the running workers (SIGTERM: each drains; all at once, then each waited for); return
        ``name: code`` of any that did not exit 0."""
        for process in self.workers:  # one SIGTERM each (a second one would end the drain at once)
            with suppress(ProcessLookupError):
                os.killpg(process.popen.pid, signal.SIGTERM)
        deadline = time.monotonic() + WORKER_STOP_S
        bad = []
        for process in self.workers:
            with suppress(subprocess.TimeoutExpired):
                process.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            code = process.stop(signal.SIGKILL)  # only if still running at the deadline
            if code != 0:
                bad.append(f"{process.name}: {code}")
        self.workers = []
        return bad

    def stop(self) -> None:
        """Stop everything the stack started."""
        try:
            self.stop_workers()
        finally:
            self._closing.close()
