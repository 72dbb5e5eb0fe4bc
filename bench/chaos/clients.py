"""The clients: the jobs they submit (planned up front), how they submit, retry and cancel them,
and what they saw."""

from __future__ import annotations

import collections
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from bench import KEY

#: Job shapes (side, steps): few, so that rounds of several jobs form; heavy enough that the
#: backlog the clients build outlasts the faults (each needs busy workers to hit).
SHAPES = [(64, 20), (96, 16), (128, 12), (128, 20)]
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
