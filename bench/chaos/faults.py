"""The faults, one after another, each gated on the run's progress so it lands while there is
work to hit."""

from __future__ import annotations

import random
import signal
import threading
import time
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from bench.chaos.clients import Outcome
from bench.chaos.stack import BUCKET, TERMINAL, Stack, statuses
from latentq_dev.devstack import Process


@dataclass
class Faults:
    """What the fault thread did, for the report."""

    kills: list[dict] = field(default_factory=list)  # {"at": wall time, "worker", "jobs", "claim"}
    sigterm_exit: int | None = None
    redis_killed_at: float | None = None
    #: When the killed Redis was seen gone (reaped): replies it sent before may still be arriving.
    redis_dead_at: float | None = None
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


def fault_plan(kills: int) -> list[tuple[str, str, float]]:
    """The faults in order, each with its gate: ``("accepted" | "ended", fraction of the jobs)``
    that must be reached before it fires, so the faults spread over the run whatever its speed."""
    plan = [("kill-claim", "accepted", 0.1), ("redis", "accepted", 0.4), ("dispatcher", "ended", 0.15)]
    # The last kill by 70 % ended: a batching worker clears the last fifth of a small run in a round
    # or two, and a kill that finds no busy worker cannot be made.
    plan += [("kill", "ended", 0.25 + 0.45 * index / max(1, kills - 1)) for index in range(kills - 1)]
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
        found = kill_on_claim(stack) if claim else None
        # A busy worker is waited for (up to 20 s): between two rounds, or after a batching worker
        # cleared a backlog (a slow S3 restart makes one), none may be busy at the gate's moment.
        deadline = time.monotonic() + 20
        while not claim and found is None and time.monotonic() < deadline and not stop.is_set():
            found = busiest(stack)
            if found is None:
                time.sleep(0.02)
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
                faults.redis_dead_at = time.time()
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
