"""The RQ worker class: runs jobs in its own process (no fork), in rounds that sample together,
with a heartbeat for each job while it runs and the warm state handed to each job explicitly."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from itertools import chain
from typing import Any

from redis.exceptions import RedisError
from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.timeouts import TimerDeathPenalty
from rq.worker import DequeueStrategy, WorkerStatus

from latentq.contract import JobSpec
from latentq.fair_share import refill
from latentq.keys import worker_alive_key
from latentq.leases import Leases
from latentq.logs import job_log_fields, log_context
from latentq.periodic import Periodic
from latentq.probes import Vitals
from latentq.rq_loop import PromptListenerWorker, work_through_outages
from worker.context import JobContext, WarmState, use_context
from worker.metrics import JOBS_RUNNING, UTILISATION, job_model, note_taken
from worker.round_builder import POLL_S, RoundBuilder, StartedRound, take_more
from worker.rounds import DeviceFault, RoundSeat, SamplingRound

#: Seconds beyond its own bound that the job loop may take to come round again before /livez says
#: the worker is stuck (``Vitals``).
LOOP_SLACK_S = 60.0


def _log_fields(job: Job) -> dict[str, str | None]:
    """The context fields of the log lines about ``job`` (``latentq.logs``): its id, and its account
    and request id when its spec names them."""
    try:
        return job_log_fields(JobSpec.model_validate(job.kwargs["spec"]))
    except (KeyError, TypeError, ValueError):
        return {"job_id": job.id}


class WarmWorker(PromptListenerWorker):
    """A ``SimpleWorker`` (jobs run in this process, so pipelines stay warm and CUDA survives; its
    command listener stops promptly: ``PromptListenerWorker``) that
    runs jobs in rounds: the job RQ hands it plus the queued jobs that can sample in the same
    pipeline call, up to ``max_batch`` images; each job in its own thread through RQ's
    ``perform_job`` with its own heartbeat and a ``JobContext`` (``warm`` and its seat in the
    round), their sampling done together on this (the main) thread (``worker.rounds``).

    A job's thread goes on encoding and uploading while the next round samples; at most
    ``max_batch`` such threads run at once, and ``drain`` waits for them (warm shutdown).
    """

    #: Seconds between heartbeats during a job.
    heartbeat_interval_s: float = 10.0
    #: Most images sampled in one pipeline call (1: no batching).
    max_batch: int = 1
    #: Seconds to wait for more jobs when a round is not full (0: take what is queued).
    batch_wait_s: float = 0.0
    #: Most jobs each RQ queue holds, topped up round robin across accounts (0: fair share off).
    fair_queue_depth: int = 8
    #: Seconds a warm shutdown (SIGTERM) may take to finish the current round and its uploads.
    drain_timeout_s: float = 60.0
    #: Recovers a job this worker gives up (``latentq.reaper.Reaper.recover``); set at start-up.
    recover: Callable[[str], str | None] | None = None
    #: Set by a warm shutdown: the worker takes no more jobs.
    stopping: bool = False
    #: What its /livez and /readyz answer from (``latentq.probes``); None: no probes.
    vitals: Vitals | None = None
    # Job timeouts raise in the job's thread (RQ's signal-based penalty works on the main thread only).
    death_penalty_class = TimerDeathPenalty

    def __init__(self, *args: Any, warm: WarmState, lease_s: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: The warm pipelines, storage, records and cancel watch every job runs with.
        self.warm = warm
        #: This worker's leases on the jobs it takes (``latentq.leases``), each ``lease_s`` seconds.
        self.leases = Leases(self.connection, self.name, lease_s)
        self._job_threads: list[threading.Thread] = []
        self._last_round_size = 1
        self._sampling_ended = 0.0

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run rounds: ``job`` and the queued jobs that can sample with it; then, while each round
        samples, the next is prepared on a thread of its own (``worker.round_builder``) and sampled
        right after it, until none is (no job waited: RQ's loop waits for the next)."""
        self.leases.take([job.id])  # from RQ's intermediate queue: now it is recoverable as ours
        self.set_state(WorkerStatus.BUSY)  # a SIGTERM from here on waits for the round (warm shutdown)
        round_: StartedRound | None = self._first_round(job, queue)
        while round_ is not None:
            round_ = self._run_round(round_)
        self.set_state(WorkerStatus.IDLE)

    def _first_round(self, job: Job, queue: Queue) -> StartedRound:
        """Start the round of ``job`` (RQ's) and the compatible jobs queued behind it. If a job fails
        to start, the jobs that started are sampled and the error raised."""
        # It waits for the threads of earlier rounds, then samples: each bound by its time limit.
        self._expect_loop(2 * (job.timeout or self.queue_class.DEFAULT_TIMEOUT))
        self.limit_job_threads(self.max_batch)  # the threads of earlier rounds: their uploads
        self.refill(queue)  # the accounts' next turns, so the round can fill (latentq.fair_share)
        deadline = time.monotonic() + self.batch_wait_s if self._last_round_size > 1 else None

        def keep_waiting(taken: bool) -> bool:
            # Under concurrent load (the last round, or this one, has several jobs) wait up to
            # batch_wait_s for more; a lone job after a lone job never waits.
            nonlocal deadline
            if deadline is None and taken:
                deadline = time.monotonic() + self.batch_wait_s
            if deadline is None or time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
            return True

        jobs = [job, *chain.from_iterable(take_more(self, queue, job, keep_waiting))]
        self.refill(queue)  # and the next round finds its jobs queued
        self._last_round_size = len(jobs)
        round_ = StartedRound(queue)
        try:
            self.start_jobs(round_, jobs, rq_head=job)
        except BaseException:
            self._run_round(round_, prepare_next=False)  # the jobs whose thread started are sampled
            raise
        return round_

    def _run_round(self, round_: StartedRound, prepare_next: bool = True) -> StartedRound | None:
        """Sample ``round_`` on this thread while the next round is prepared (unless the worker is
        stopping); return the next round, started (None: no job was waiting)."""
        longest = max((job.timeout or self.queue_class.DEFAULT_TIMEOUT for job in round_.jobs), default=0)
        self._expect_loop(2 * longest)  # its jobs' own limits bound it
        threads = self._job_threads[-len(round_.jobs) :] if round_.jobs else []
        building = prepare_next and not self.stopping
        builder = RoundBuilder(self, round_.queue, threads).start() if building else None
        try:
            round_.sampling.run(self.max_batch)
        except DeviceFault as error:
            self.give_up(f"the accelerator failed ({error}); exiting for a restart")
        except BaseException:
            prepared = builder.result() if builder is not None else None
            if prepared is not None:  # its threads wait to sample: let them, or they wait out their limit
                self._run_round(prepared, prepare_next=False)
            raise
        finally:
            if builder is not None:
                builder.sampling_ended()
            self._log_round(round_.sampling, [job.id for job in round_.jobs])
        prepared = builder.result() if builder is not None else None
        if prepared is not None:
            self._last_round_size = len(prepared.jobs)
        return prepared

    def start_jobs(self, round_: StartedRound, jobs: list[Job], rq_head: Job | None = None) -> None:
        """Start a thread for each of ``jobs`` (taken for ``round_``) that runs it through RQ's
        ``perform_job`` and samples in the round. If one fails to start, it and the jobs after it go
        back to the front of the queue, in order (``rq_head`` stays: RQ's intermediate queue and
        registries account for it), and the error is raised."""
        note_taken(jobs, self.warm.pipelines)
        for index, member in enumerate(jobs):
            try:
                execution = self.prepare_execution(member)
                thread = threading.Thread(
                    target=self._run_job_thread,
                    args=(round_.sampling.seat(), member, round_.queue, execution, round_.go),
                    name=f"job-{member.id}",
                )
                thread.start()
            except BaseException:
                self._requeue(round_.queue, [job for job in jobs[index:] if job is not rq_head])
                raise
            self._job_threads.append(thread)  # by one thread at a time: the builder or this one
            round_.jobs.append(member)
            round_.sampling.expected += 1

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        """RQ's worker heartbeat. RQ's loop beats bare before each wait for a job (and RQ's start of
        a job, and job threads, with a time to live): that beat also says when the loop comes round
        again, within the wait."""
        if not args and not kwargs and threading.current_thread() is threading.main_thread():
            self._expect_loop(self.dequeue_timeout)
        super().heartbeat(*args, **kwargs)

    def _expect_loop(self, within_s: float) -> None:
        """Tell /livez that the job loop comes round again within ``within_s`` seconds (and a slack)."""
        if self.vitals is not None:
            self.vitals.expect("job loop", within_s + LOOP_SLACK_S)

    def shutting_down(self) -> bool:
        """Whether a warm shutdown was asked for (asked between loops: a loop waiting for Redis is
        no stuck loop)."""
        self._expect_loop(self.dequeue_timeout)
        return self.stopping

    def refill_queues(self) -> None:
        """Top every queue of this worker up from the accounts' waiting jobs (the reaper's pass)."""
        for queue in self.queues:
            self.refill(queue)

    def refill(self, queue: Queue) -> None:
        """Top ``queue`` up from the accounts' waiting jobs (fair share); a miss waits for the next."""
        with suppress(RedisError):
            refill(self.connection, queue.name, self.fair_queue_depth)

    def _requeue(self, queue: Queue, jobs: list[Job]) -> None:
        """Put ``jobs`` back at the front of ``queue``, in their order, and drop their leases. (If
        this fails too, their leases expire and the reaper puts them back.)"""
        if not jobs:
            return
        try:
            self.connection.lpush(queue.key, *[job.id for job in reversed(jobs)])
            self.leases.release([job.id for job in jobs], only_ended=False)
            self.log.warning("round failed to start: %d taken job(s) put back in the queue", len(jobs))
        except RedisError as error:
            self.log.error(
                "round failed to start; could not put back jobs %s: %s", [j.id for j in jobs], error
            )

    def _log_round(self, round_: SamplingRound, job_ids: list[str]) -> None:
        """Log the round: its jobs, how long it sampled, and how long sampling sat idle between the
        last round and this one (from the end of the last sampling to the start of this one: under
        load, what preparing the round still cost; when idle, also the wait for work); count both in
        the worker's utilisation (``worker.metrics.Utilisation``)."""
        idle_ms = (round_.started - self._sampling_ended) * 1000 if self._sampling_ended else 0.0
        sampling_ms = (round_.ended - round_.started) * 1000
        self._sampling_ended = round_.ended
        fields = {"batch_size": round_.expected, "idle_ms": round(idle_ms, 1),
                  "sampling_ms": round(sampling_ms, 1), "job_ids": job_ids}  # fmt: skip
        self.log.info("round of %d jobs: sampling sat idle %.1f ms before it, then sampled %.1f ms",
                      round_.expected, idle_ms, sampling_ms, extra=fields)  # fmt: skip
        summary = UTILISATION.note_round(round_.started, round_.ended, idle_ms)
        if summary is not None:
            self.log.info("utilisation: busy %.3f since start, %.3f over the last %.0f s; idle between "
                          "rounds median %.1f ms, p95 %.1f ms", summary["busy_ratio"],
                          summary["busy_ratio_window"], UTILISATION.window_s, summary["idle_ms_median"],
                          summary["idle_ms_p95"], extra=summary)  # fmt: skip

    def _run_job_thread(
        self, seat: RoundSeat, job: Job, queue: Queue, execution: Execution, go: threading.Event
    ) -> None:
        # RQ's heartbeats run from the start: a prepared job waits in RQ's started registry, and
        # one not kept alive there would be taken for abandoned while a long round samples.
        try:
            with Periodic(
                lambda: self.maintain_heartbeats(job, execution),
                self.heartbeat_interval_s,
                lambda error: self.log.warning("heartbeat for job %s failed: %s", job.id, error),
                "latentq-heartbeat",
            ):
                go.wait()  # a prepared round's jobs start once the round before it has sampled
                deadline = time.monotonic() + (job.timeout or self.queue_class.DEFAULT_TIMEOUT)
                context = JobContext(self.warm, seat, deadline, submitted_at=job.created_at.timestamp())
                with (
                    log_context(**_log_fields(job)),  # RQ's lines about the job too
                    use_context(context),
                    JOBS_RUNNING.labels(job_model(job, self.warm.pipelines)).track_inprogress(),
                ):
                    self.perform_job(job, queue, execution)
        finally:
            seat.leave()
            with suppress(RedisError):  # else the lease expires and the reaper sees the job's state
                self.leases.release([job.id])

    def serve(self) -> None:
        """Take jobs until a warm shutdown. If Redis is lost mid-round (RQ's loop then ends), wait
        for it, with backoff, and take jobs again: the jobs whose outcome could not be recorded keep
        their leases, and run again once those expire."""
        # One keeper renews every lease this worker holds, taken or claimed, running or not yet,
        # and the mark that says this worker is alive (what /readyz counts).
        with suppress(RedisError):
            self.beat()
        with Periodic(
            self.beat,
            self.heartbeat_interval_s,
            lambda error: self.log.warning("lease renewal failed: %s", error),
            "latentq-leases",
        ):
            # Round robin: with several models, no model's queue starves the others.
            work_through_outages(
                self,
                lambda: self.work(logging_level="INFO", dequeue_strategy=DequeueStrategy.ROUND_ROBIN),
                self.shutting_down,
            )
        if self.vitals is not None:  # its loops are over: the drain is bound by its own deadline
            self.vitals.forget("job loop", "heartbeat")

    def beat(self) -> None:
        """Renew this worker's leases and its alive mark, each for the lease time."""
        if self.vitals is not None:  # beats late by a lease: its jobs are recovered elsewhere; stuck
            self.vitals.expect("heartbeat", self.leases.lease_s)
        self.leases.renew(sorted(self.leases.held))
        self.connection.set(worker_alive_key(self.name), 1, ex=max(1, round(self.leases.lease_s)))

    def request_stop(self, signum: int, frame: Any) -> None:
        """SIGTERM (warm shutdown): take no more jobs, finish the current round and its uploads
        within ``drain_timeout_s``; a second signal, or the deadline, gives the jobs up (``give_up``)."""
        self.stopping = True
        if self.vitals is not None:
            self.vitals.ready = False  # draining: no more jobs come to it
        if not getattr(self, "_draining", None):
            self._draining = threading.Timer(
                self.drain_timeout_s, self.give_up, args=("the drain deadline passed",)
            )
            self._draining.daemon = True
            self._draining.start()
        super().request_stop(signum, frame)

    def request_force_stop(self, signum: int, frame: Any) -> None:
        """A second SIGTERM or SIGINT during a warm shutdown: give the jobs up now (on a thread of its
        own: the interrupted main thread may hold the leases' lock)."""
        threading.Thread(target=self.give_up, args=(f"signal {signum} during the warm shutdown",)).start()

    def give_up(self, why: str) -> None:
        """Hand every job this worker holds back (each counts an attempt; see ``latentq.reaper``)
        and exit at once with status 1."""
        self.log.warning("giving up %d job(s): %s", len(self.leases.held), why)
        try:
            for job_id in self.leases.expire_now():
                if self.recover is not None:
                    self.recover(job_id)
        finally:  # whatever happened: their leases are over, so another worker's reaper recovers them
            os._exit(1)

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping before a job runs; the job always leaves RQ's intermediate queue (RQ
        leaves it there for a worker of several queues), where only jobs not yet started stay."""
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def limit_job_threads(self, limit: int, besides: list[threading.Thread] | None = None) -> None:
        """Wait until fewer than ``limit`` job threads of earlier rounds (not ``besides``: the
        round sampling now) still run."""
        exempt = set(besides or ())
        self._job_threads = [thread for thread in self._job_threads if thread.is_alive()]
        while len([thread for thread in self._job_threads if thread not in exempt]) >= max(1, limit):
            oldest = next(thread for thread in self._job_threads if thread not in exempt)
            oldest.join()
            self._job_threads.remove(oldest)

    def drain(self) -> None:
        """Wait for every job thread (their uploads and records) to finish."""
        for thread in self._job_threads:
            thread.join()
        self._job_threads = []

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds a running job stays alive in RQ's started registry without a new heartbeat."""
        return max(60, int(self.heartbeat_interval_s * 6))
