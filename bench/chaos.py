"""The chaos harness: jobs from concurrent clients while workers, Redis, S3 and the dispatcher are
killed under them; then every ``202`` is reconciled against what the service did.

One command, bounded in count and time, on loopback only. It starts its own stack in a temporary
folder (Redis with its append-only file, SeaweedFS S3, the API, ``--workers`` workers of the
embedded tiny model, the webhook dispatcher and a webhook receiver), and has ``--clients`` clients
submit ``--jobs`` jobs (mixed sizes; some with webhooks, a few to a slow receiver; some cancelled
at a random moment). Submits that meet a ``503`` or a dropped connection are retried with the same
``Idempotency-Key``, as a client should. Meanwhile the faults, one after another:

- ``--kills`` SIGKILLs of the worker holding the most jobs (the first one timed the moment a
  worker claims a round of several), each replaced by a new worker at once;
- one SIGTERM (the worker drains and must exit 0), replaced too;
- Redis ``kill -9`` (under load, while clients still submit), restarted 3 s later from its AOF;
- S3 killed for 3 s, then restarted;
- the dispatcher SIGKILLed while a delivery is in flight, restarted 1 s later.

Then it waits (``--deadline-s`` at most) until every accepted job is terminal and every webhook
sent, and reconciles each ``202`` against the job's record (through ``GET /v1/jobs/{id}``), its
event stream, the objects in S3, RQ's lists and registries, the leases and the receiver's log.
It prints accepted, succeeded, failed by error name, canceled, **lost** (accepted, and no record
or never terminal), **duplicated** (more than one terminal event, two different completed
webhooks, or a cancel answered ``canceled`` that did not end so), **stuck** (not terminal at the
deadline), orphaned objects, jobs left in RQ's lists, and the time from each worker kill to the
killed worker's jobs' terminal states. Jobs acknowledged within the last second before the Redis
kill that are missing afterwards are the AOF ``everysec`` window: reported on their own. Exit
status 1 if any lost, duplicated, stuck, orphaned or left-over job is outside that window.

    .venv/bin/python -m bench.chaos [--jobs 100] [--kills 3] [--clients 4] [--workers 2]
        [--rate 30] [--seed 1] [--deadline-s 180] [--json bench/results/chaos.json]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import random
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import StartedJobRegistry

from bench import KEY, write_result
from bench.overhead import percentile, tiny_stack
from latentq.keys import LEASE_HOLDERS, LEASES, job_events_key, job_key, queue_name
from latentq_dev.devstack import Process, RedisServer, S3Server, free_port, wait_until

TERMINAL = ("succeeded", "failed", "canceled")
BUCKET = "chaos"
#: Job shapes (side, steps): few, so that rounds of several jobs form; heavy enough that the
#: backlog the clients build outlasts the faults (each needs busy workers to hit).
SHAPES = [(64, 20), (96, 16), (128, 12), (128, 20)]
#: Seconds the receiver holds a delivery to a slow path (so the dispatcher can die mid-attempt).
SLOW_RECEIVER_S = 1.5
#: How long a client keeps retrying one submit that meets 503s or dropped connections.
SUBMIT_RETRY_S = 60.0


@dataclass
class Planned:
    """One job a client will submit."""

    index: int
    body: dict
    idempotency_key: str
    #: Seconds after its 202 to cancel it at, or None.
    cancel_after_s: float | None


@dataclass
class Outcome:
    """What the clients saw."""

    accepted: dict[str, float] = field(default_factory=dict)  # job id -> wall time of its 202
    planned: dict[str, Planned] = field(default_factory=dict)  # job id -> what was submitted
    refused: collections.Counter = field(default_factory=collections.Counter)  # status -> count
    gave_up: int = 0  # submits still refused after SUBMIT_RETRY_S
    server_errors: int = 0  # any 5xx other than 503
    cancels: dict[str, str] = field(default_factory=dict)  # job id -> status the cancel answered
    lock: threading.Lock = field(default_factory=threading.Lock)


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


def plan_jobs(count: int, rng: random.Random, receiver_port: int) -> list[Planned]:
    """Draw ``count`` jobs: mixed shapes and samples, a third with webhooks (one in five of those to
    the slow path), one in eight cancelled 0-2 s after its 202."""
    planned = []
    for index in range(count):
        side, steps = rng.choice(SHAPES)
        body: dict[str, Any] = {"prompt": f"chaos {index}", "width": side, "height": side, "steps": steps,
                                "seed": index, "samples": rng.choice((1, 1, 1, 2))}  # fmt: skip
        body["sampler"] = "K_EULER"
        if rng.random() < 1 / 3:
            path = "slow" if rng.random() < 0.2 else "hook"
            body["webhook_url"] = f"http://127.0.0.1:{receiver_port}/{path}/{index}"
        cancel = rng.uniform(0, 2) if rng.random() < 1 / 8 else None
        planned.append(Planned(index, body, f"chaos-{uuid.uuid4().hex}", cancel))
    return planned


def submit(client: httpx.Client, job: Planned, outcome: Outcome) -> str | None:
    """Submit ``job`` until it is accepted (retrying 503s and dropped connections with the same
    ``Idempotency-Key``); return its id, or None."""
    deadline = time.monotonic() + SUBMIT_RETRY_S
    while time.monotonic() < deadline:
        try:
            response = client.post(
                "/v1/generate", json=job.body, headers={"Idempotency-Key": job.idempotency_key}
            )
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if response.status_code in (200, 202):
            job_id = response.json()["id"]
            with outcome.lock:
                outcome.accepted.setdefault(job_id, time.time())
                outcome.planned[job_id] = job
            return job_id
        with outcome.lock:
            outcome.refused[response.status_code] += 1
            outcome.server_errors += response.status_code >= 500 and response.status_code != 503
        if response.status_code != 503:
            return None
        time.sleep(min(float(response.headers.get("Retry-After", "1")), 1.0))
    with outcome.lock:
        outcome.gave_up += 1
    return None


def cancel(client: httpx.Client, job_id: str, outcome: Outcome) -> None:
    """Cancel ``job_id``; note the status a 200 answered with (retrying 503s a while)."""
    for _ in range(50):
        try:
            response = client.post(f"/v1/jobs/{job_id}/cancel")
        except httpx.HTTPError:
            time.sleep(0.2)
            continue
        if response.status_code == 200:
            with outcome.lock:
                outcome.cancels[job_id] = response.json()["status"]
            return
        if response.status_code == 503:
            time.sleep(0.2)
            continue
        with outcome.lock:
            outcome.server_errors += response.status_code >= 500
        return


def run_clients(base_url: str, jobs: list[Planned], clients: int, rate: float, outcome: Outcome) -> None:
    """Submit ``jobs`` from ``clients`` threads, about ``rate`` a second in all; cancel the planned ones."""
    pending = collections.deque(jobs)
    lock = threading.Lock()
    start = time.monotonic()
    timers: list[threading.Timer] = []

    def loop() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=10) as client:
            while True:
                with lock:
                    if not pending:
                        return
                    job = pending.popleft()
                time.sleep(max(0.0, start + job.index / rate - time.monotonic()))
                job_id = submit(client, job, outcome)
                if job_id is not None and job.cancel_after_s is not None:
                    timer = threading.Timer(job.cancel_after_s, cancel_once, args=(job_id,))
                    timers.append(timer)
                    timer.start()

    def cancel_once(job_id: str) -> None:
        with httpx.Client(
            base_url=base_url, headers={"Authorization": f"Bearer {KEY}"}, timeout=10
        ) as client:
            cancel(client, job_id, outcome)

    threads = [threading.Thread(target=loop, name=f"client-{index}") for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for timer in timers:
        timer.join()


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


@dataclass
class Faults:
    """What the fault thread did, for the report."""

    kills: list[dict] = field(default_factory=list)  # {"at": wall time, "worker", "jobs", "claim"}
    sigterm_exit: int | None = None
    redis_killed_at: float | None = None
    redis_down_s: float = 0.0
    s3_down_s: float = 0.0
    dispatcher_killed_in_flight: int | None = None
    #: Faults that could not be made (nothing to hit at the time): the run does not count then.
    missed: list[str] = field(default_factory=list)
    log: list[str] = field(default_factory=list)


def busiest(stack: Stack, timeout_s: float = 30.0) -> tuple[Process, list[str]] | None:
    """Wait for a live worker holding jobs; return it (the one holding most) and its job ids."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            holdings = stack.holdings()
        except RedisError:
            holdings = {}
        live = {process.name: process for process in stack.live_workers()}
        candidates = [(len(jobs), name) for name, jobs in holdings.items() if name in live]
        if candidates:
            _, name = max(candidates)
            return live[name], holdings[name]
        time.sleep(0.02)
    return None


def kill_on_claim(stack: Stack, timeout_s: float = 10.0) -> tuple[Process, list[str]] | None:
    """Wait until a live worker claims a round (its lease count grows by 2 or more at once); return
    it and its job ids then. Falls back to the busiest worker after ``timeout_s``."""
    before: dict[str, int] = {}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        holdings = stack.holdings()
        live = {process.name: process for process in stack.live_workers()}
        for name, jobs in holdings.items():
            if name in live and len(jobs) - before.get(name, 0) >= 2:
                return live[name], jobs
        before = {name: len(jobs) for name, jobs in holdings.items()}
        time.sleep(0.002)
    return busiest(stack)


def statuses(stack: Stack, job_ids: list[str]) -> list[str | None]:
    """The status each job's record has now (None: no record)."""
    with stack.redis.pipeline(transaction=False) as pipe:
        for job_id in job_ids:
            pipe.hget(job_key(job_id), "status")
        return [status.decode() if status else None for status in pipe.execute()]


def fault_plan(kills: int) -> list[tuple[str, str, float]]:
    """The faults in order, each with its gate: ``("accepted" | "ended", fraction of the jobs)``
    that must be reached before it fires, so the faults spread over the run whatever its speed."""
    plan = [("kill-claim", "accepted", 0.1), ("redis", "accepted", 0.4), ("dispatcher", "ended", 0.15)]
    plan += [("kill", "ended", 0.25 + 0.55 * index / max(1, kills - 1)) for index in range(kills - 1)]
    plan += [("s3", "ended", 0.45), ("sigterm", "ended", 0.6)]
    return sorted(plan, key=lambda step: (step[1] == "ended", step[2]))


def run_faults(
    stack: Stack,
    kills: int,
    outcome: Outcome,
    total: int,
    faults: Faults,
    stop: threading.Event,
    rng: random.Random,
) -> None:
    """Make the faults one after another, each at a random moment soon after its gate is reached
    when there is work to hit; a fault that could not be made is noted in ``faults.missed``."""

    def note(message: str) -> None:
        faults.log.append(f"{time.strftime('%H:%M:%S')} {message}")

    def reached(gate: str, fraction: float) -> bool:
        ids = list(outcome.accepted)
        if gate == "accepted":
            return len(ids) >= fraction * total
        try:
            return sum(status in TERMINAL for status in statuses(stack, ids)) >= fraction * total
        except RedisError:
            return False

    def kill_worker(claim: bool) -> bool:
        found = kill_on_claim(stack) if claim else busiest(stack)
        if found is None:
            return False
        process, jobs = found
        stack.signal(process, signal.SIGKILL)
        faults.kills.append({"at": time.time(), "worker": process.name, "jobs": jobs, "claim": claim})
        process.popen.wait()
        stack.start_worker()
        note(f"SIGKILL {process.name} holding {len(jobs)} job(s){' (claiming a round)' if claim else ''}")
        return True

    for step, gate, fraction in fault_plan(kills):
        while not stop.is_set() and not reached(gate, fraction):
            time.sleep(0.1)
        time.sleep(rng.uniform(0, 0.5))
        if stop.is_set():
            faults.missed.append(step)
            continue
        try:
            made = True
            if step in ("kill", "kill-claim"):
                made = kill_worker(step == "kill-claim")
            elif step == "redis":
                process = stack.redis_server.process
                assert process is not None
                faults.redis_killed_at = time.time()
                process.stop(signal.SIGKILL)
                time.sleep(3)
                stack.redis_server.start()
                faults.redis_down_s = time.time() - faults.redis_killed_at
                note(f"Redis kill -9, back after {faults.redis_down_s:.1f} s")
            elif step == "s3":
                down = time.time()
                assert stack.s3.process is not None
                stack.s3.process.stop(signal.SIGKILL)
                time.sleep(3)
                stack.s3.start(BUCKET)
                faults.s3_down_s = time.time() - down
                note(f"S3 killed, back after {faults.s3_down_s:.1f} s")
            elif step == "sigterm":
                found = busiest(stack)
                made = found is not None
                if found is not None:
                    stack.signal(found[0], signal.SIGTERM)
                    stack.start_worker()
                    faults.sigterm_exit = found[0].popen.wait(timeout=60)
                    note(f"SIGTERM {found[0].name} ({len(found[1])} job(s)): exited {faults.sigterm_exit}")
            elif step == "dispatcher":
                deadline = time.monotonic() + 20
                while stack.receiver.in_flight == 0 and time.monotonic() < deadline:
                    time.sleep(0.005)
                made = stack.receiver.in_flight > 0
                if made:
                    faults.dispatcher_killed_in_flight = stack.receiver.in_flight
                    stack.stopped_on_purpose.add(stack.dispatcher.name)
                    stack.dispatcher.stop(signal.SIGKILL)
                    time.sleep(1)
                    stack.dispatcher = stack.start_dispatcher()
                    note(f"dispatcher SIGKILL, {faults.dispatcher_killed_in_flight} delivery(ies) in flight")
        except Exception as error:  # noqa: BLE001 - a fault that could not be made is reported, not fatal
            note(f"{step} failed: {type(error).__name__}: {error}")
            made = False
        if not made:
            faults.missed.append(step)
            note(f"{step}: no moment to make it (no busy worker, no delivery in flight)")


def wait_until_settled(stack: Stack, outcome: Outcome, webhooks: dict[str, bool], deadline: float) -> None:
    """Wait until every accepted job is terminal (or has no record: reconciled as lost) and every
    terminal job with a webhook has its completed delivery, or until ``deadline``."""
    while time.monotonic() < deadline:
        ids = list(outcome.accepted)
        try:
            now = statuses(stack, ids)
        except RedisError:
            time.sleep(0.5)
            continue
        open_jobs = [
            job_id for job_id, status in zip(ids, now, strict=True) if status and status not in TERMINAL
        ]
        delivered = stack.receiver.completed()
        undelivered = [job_id for job_id, status in zip(ids, now, strict=True)
                       if webhooks.get(job_id) and status and job_id not in delivered]  # fmt: skip
        if not open_jobs and not undelivered:
            return
        time.sleep(0.5)


def reconcile(stack: Stack, outcome: Outcome, webhooks: dict[str, bool], faults: Faults) -> dict:
    """Check every accepted job against its record, events, objects, RQ's lists and the receiver."""
    aof_from = (faults.redis_killed_at or 0) - 1.5
    in_window = lambda job_id: aof_from <= outcome.accepted[job_id] <= (faults.redis_killed_at or 0)  # noqa: E731
    statuses: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    problems: dict[str, list[str]] = collections.defaultdict(list)
    finished_at: dict[str, float] = {}
    images: dict[str, set[str]] = {}
    delivered = stack.receiver.completed()
    queue = Queue(queue_name("tiny-sd"), connection=stack.redis)
    lists = [stack.redis.lrange(key, 0, -1) for key in (queue.key, queue.intermediate_queue_key)]
    in_rq = {*lists[0], *lists[1], *stack.redis.zrange(LEASES, 0, -1)}
    in_rq |= {job_id.encode() for job_id in StartedJobRegistry(queue=queue).get_job_ids()}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as client:
        for job_id in outcome.accepted:
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code == 404:
                problems["lost_aof_window" if in_window(job_id) else "lost"].append(job_id)
                continue
            if response.status_code != 200:
                problems["read_errors"].append(f"{job_id}: {response.status_code}")
                continue
            job = response.json()
            status = job["status"]
            statuses[status] += 1
            if status not in TERMINAL:
                problems["stuck"].append(job_id)
                continue
            if status == "failed":
                errors[job["error"]["name"]] += 1
            if job.get("finished_at"):
                finished_at[job_id] = datetime.fromisoformat(job["finished_at"]).timestamp()
            if status == "succeeded":
                images[job_id] = {image["url"].split("?")[0].rsplit("/", 1)[-1] for image in job["images"]}
            ended = [fields[b"event"].decode() for _, fields in stack.redis.xrange(job_events_key(job_id))]
            if sum(name in TERMINAL for name in ended) != 1:
                problems["duplicated"].append(f"{job_id}: terminal events {ended}")
            if outcome.cancels.get(job_id) == "canceled" and status != "canceled":
                problems["duplicated"].append(f"{job_id}: cancel answered canceled, ended {status}")
            if webhooks.get(job_id):
                hooks = delivered.get(job_id, [])
                if not hooks:
                    problems["webhook_missing"].append(job_id)
                elif (
                    len({(hook["id"], hook["status"]) for hook in hooks}) > 1 or hooks[0]["status"] != status
                ):
                    problems["duplicated"].append(f"{job_id}: completed webhooks {hooks}")
            if job_id.encode() in in_rq:
                problems["left_in_rq"].append(job_id)
    s3 = stack.s3.client()
    objects = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
               for item in page.get("Contents", [])]  # fmt: skip
    for key in objects:  # "<job id>/<index>.<ext>": an image no succeeded job shows is an orphan
        job_id, _, name = key.partition("/")
        if name and not name.startswith("inputs/") and name not in images.get(job_id, set()):
            problems["orphans"].append(key)
    to_terminal = [finished_at[job_id] - kill["at"] for kill in faults.kills for job_id in kill["jobs"]
                   if job_id in finished_at and finished_at[job_id] >= kill["at"]]  # fmt: skip
    redelivered = sum(len(hooks) - len({hook["id"] for hook in hooks}) for hooks in delivered.values())
    return {
        "accepted": len(outcome.accepted),
        **{status: statuses[status] for status in TERMINAL},
        "failed_by_error": dict(errors),
        "lost": len(problems["lost"]),
        "lost_aof_window": len(problems["lost_aof_window"]),
        "duplicated": len(problems["duplicated"]),
        "stuck": len(problems["stuck"]),
        "orphaned_objects": len(problems["orphans"]),
        "left_in_rq": len(problems["left_in_rq"]),
        "webhooks_expected": sum(1 for job_id in outcome.accepted if webhooks.get(job_id)),
        "webhooks_missing": len(problems["webhook_missing"]),
        "webhooks_redelivered_same_id": redelivered,
        "read_errors": len(problems["read_errors"]),
        "kill_to_terminal_s": {
            "jobs": len(to_terminal),
            "p50": round(statistics.median(to_terminal), 2) if to_terminal else None,
            "p99": round(percentile(to_terminal, 0.99), 2) if to_terminal else None,
        },
        "problems": {name: ids[:20] for name, ids in problems.items() if ids},
    }


def _interrupt(*_: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the harness; print the reconciliation; write JSON if asked; exit 1 on any loss."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
