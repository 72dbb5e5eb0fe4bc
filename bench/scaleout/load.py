"""The load: closed-loop clients that each submit a job and wait for its end, then the next; and a
probe timing cheap API reads meanwhile."""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field

import httpx

from bench import KEY

#: The job every client submits (the model and the seed vary; every third job asks for 2 images).
BODY = {"prompt": "a lighthouse at dusk", "width": 64, "height": 64, "steps": 20, "sampler": "K_EULER"}
TERMINAL = ("succeeded", "failed", "canceled")
#: Seconds a client waits for one job (``Prefer: wait``, then polling) before giving it up.
JOB_WAIT_S = 120.0
#: Seconds between two polls of a job that a ``Prefer: wait`` answered before its end.
POLL_S = 0.05
#: Seconds between two rounds of the probe (one ``GET /healthz`` and one ``GET /v1/jobs/{id}``).
PROBE_EVERY_S = 0.1


@dataclass
class Ended:
    """One accepted job as its client saw it end (monotonic seconds)."""

    job_id: str
    model: str
    samples: int
    submitted: float
    ended: float
    status: str
    images: int
    batch_size: int | None


@dataclass
class Load:
    """What the clients and the probe saw."""

    #: When the clients began (monotonic seconds).
    started: float = 0.0
    #: Job id -> (model, samples) of every job answered 2xx.
    accepted: dict[str, tuple[str, int]] = field(default_factory=dict)
    ended: list[Ended] = field(default_factory=list)
    refused: collections.Counter = field(default_factory=collections.Counter)  # status -> count
    transport_errors: int = 0
    #: Accepted jobs a client stopped waiting for (not terminal after ``JOB_WAIT_S``).
    unanswered: list[str] = field(default_factory=list)
    #: Probe route -> (when, seconds) of each read.
    probes: dict[str, list[tuple[float, float]]] = field(default_factory=lambda: {"healthz": [], "job": []})
    lock: threading.Lock = field(default_factory=threading.Lock)


def job_body(index: int, models: list[str]) -> dict:
    """Return the ``index``-th body a client submits: the models in turn, 2 images every third job."""
    samples = 2 if index % 3 == 2 else 1
    return {**BODY, "model": models[index % len(models)], "seed": index, "samples": samples}


def run_job(client: httpx.Client, body: dict, load: Load) -> None:
    """Submit ``body`` with ``Prefer: wait``, poll until it ends if the wait did not see it end, and
    note what happened in ``load``."""
    submitted = time.monotonic()
    try:
        response = client.post("/v1/generate", json=body, headers={"Prefer": "wait=60"})
    except httpx.HTTPError:
        with load.lock:
            load.transport_errors += 1
        return
    if response.status_code not in (200, 202):
        with load.lock:
            load.refused[response.status_code] += 1
        return
    job = response.json()
    with load.lock:
        load.accepted[job["id"]] = (body["model"], body["samples"])
    deadline = submitted + JOB_WAIT_S
    while job["status"] not in TERMINAL and time.monotonic() < deadline:
        time.sleep(POLL_S)
        try:
            answer = client.get(f"/v1/jobs/{job['id']}")
        except httpx.HTTPError:
            continue
        if answer.status_code == 200:
            job = answer.json()
    ended = Ended(job["id"], body["model"], body["samples"], submitted, time.monotonic(), job["status"],
                  len(job.get("images") or []), job.get("batch_size"))  # fmt: skip
    with load.lock:
        if job["status"] in TERMINAL:
            load.ended.append(ended)
        else:
            load.unanswered.append(job["id"])


def probe(base_url: str, load: Load, stop: threading.Event) -> None:
    """Time ``GET /healthz`` and ``GET /v1/jobs/{id}`` (of the latest accepted job) until ``stop``."""
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=base_url, headers=headers, timeout=30) as client:
        while not stop.wait(PROBE_EVERY_S):
            with load.lock:
                latest = next(reversed(load.accepted), None)
            reads = [("healthz", "/healthz")] + ([("job", f"/v1/jobs/{latest}")] if latest else [])
            for name, path in reads:
                started = time.monotonic()
                try:
                    client.get(path).raise_for_status()
                except httpx.HTTPError:
                    continue  # counted by its absence; the clients' errors say more
                load.probes[name].append((started, time.monotonic() - started))


def run_load(base_url: str, clients: int, models: list[str], seconds: float) -> Load:
    """Run ``clients`` closed-loop clients (and the probe) submitting for ``seconds``; each then
    waits for its job in flight. Return what they saw."""
    load = Load(started=time.monotonic())
    deadline = load.started + seconds
    counter = iter(range(10**9))
    counter_lock = threading.Lock()

    def client_loop() -> None:
        headers = {"Authorization": f"Bearer {KEY}"}
        with httpx.Client(base_url=base_url, headers=headers, timeout=JOB_WAIT_S) as client:
            while time.monotonic() < deadline:
                with counter_lock:
                    index = next(counter)
                run_job(client, job_body(index, models), load)

    stop = threading.Event()
    prober = threading.Thread(target=probe, args=(base_url, load, stop), name="probe")
    threads = [threading.Thread(target=client_loop, name=f"client-{n}") for n in range(clients)]
    prober.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    prober.join()
    return load
