"""Pipelined rounds: while one round samples on the worker's main thread, a thread of its own
prepares the next, so sampling goes from one round to the next with no Redis round trip or Python
bookkeeping in between.

The builder claims the head of a queue and its compatible batch-mates straight off the queue list,
each with its lease (``Leases.claim``: a worker killed now loses nothing, the reaper recovers them),
does RQ's bookkeeping (``prepare_execution``) and starts their job threads at once. Those wait for
the current round's sampling to end before RQ's ``perform_job`` starts (so a job's time limit, and
its ``running`` status, start as they would had it been taken then), then mark their jobs running
and hand their ``SampleRequest``s to the next ``SamplingRound`` in parallel. It keeps gathering
batch-mates while the current round samples (that wait costs nothing) and stops once it ends. It
takes nothing during a warm shutdown, a suspension, or when RQ's maintenance is due (RQ's loop then
runs it); nothing queued at the end of sampling: RQ's loop waits for the next job.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.suspension import is_suspended

from latentq.contract import JobSpec
from latentq.keys import job_key
from worker.rounds import SamplingRound, batch_key

if TYPE_CHECKING:
    from worker.warm_worker import WarmWorker

#: Queued jobs looked at, from the head of the queue, when filling a round.
ROUND_SCAN_DEPTH = 64
#: Seconds between two looks at the queues while a round gathers jobs.
POLL_S = 0.005


def batch_info(job: Job) -> tuple[tuple | None, int]:
    """The RQ job's ``batch_key`` (None: not a generation job, or one that runs alone) and how many
    images it makes, from its spec read once."""
    try:
        spec = JobSpec.model_validate(job.kwargs["spec"])
    except (KeyError, TypeError, ValueError):
        return None, 1
    return batch_key(spec), spec.samples


def _set_event() -> threading.Event:
    event = threading.Event()
    event.set()
    return event


@dataclass
class StartedRound:
    """A round whose job threads run (each samples through its seat, or leaves) once ``go`` is set."""

    queue: Queue
    sampling: SamplingRound = field(default_factory=SamplingRound)
    jobs: list[Job] = field(default_factory=list)
    #: Set when the round before it has sampled: only then do its jobs start (their time limits,
    #: their ``running`` status), as a job taken from the queue then would.
    go: threading.Event = field(default_factory=_set_event)


def retried(worker: WarmWorker, job_ids: list[str]) -> set[str]:
    """Return those of ``job_ids`` that are being run again (attempt > 1), in one round trip."""
    if not job_ids:
        return set()
    with worker.connection.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hget(job_key(job_id), "attempt")
        attempts = pipeline.execute()
    return {job_id for job_id, attempt in zip(job_ids, attempts, strict=True) if int(attempt or 1) > 1}


def take_more(
    worker: WarmWorker, queue: Queue, head: Job, keep_waiting: Callable[[bool], bool]
) -> Iterator[list[Job]]:
    """Claim the jobs waiting in ``queue`` that can sample in one call with ``head`` (the same
    ``batch_key``), oldest first, up to ``max_batch`` images in all, yielding each claimed lot; the
    others stay queued for later rounds. Between looks, ``keep_waiting(any_taken)`` pauses and says
    whether to look again.
    A job run again after its worker was lost runs alone (it may be what killed it)."""
    key, images = batch_info(head)
    if key is None or images >= worker.max_batch or retried(worker, [head.id]):
        return
    seen: set[str] = set()
    taken = False
    while images < worker.max_batch:
        waiting = [job_id.decode() for job_id in worker.connection.lrange(queue.key, 0, ROUND_SCAN_DEPTH - 1)]
        unseen = [job_id for job_id in waiting if job_id not in seen]
        seen.update(unseen)
        again = retried(worker, unseen)
        candidates: list[tuple[Job, int]] = []
        for job in worker.job_class.fetch_many(
            [job_id for job_id in unseen if job_id not in again],
            connection=worker.connection,
            serializer=worker.serializer,
        ):
            if job is not None:
                job_batch, samples = batch_info(job)
                if job_batch == key and images + samples <= worker.max_batch:
                    candidates.append((job, samples))
                    images += samples
        if candidates:  # claimed with their leases in one script; one another worker took is not ours
            claimed = worker.leases.claim(queue.key, [job.id for job, _ in candidates])
            lot = [job for (job, _), removed in zip(candidates, claimed, strict=True) if removed]
            images -= sum(samples for (_, samples), removed in zip(candidates, claimed, strict=True)
                          if not removed)  # fmt: skip
            if lot:
                taken = True
                yield lot
        if images >= worker.max_batch or not keep_waiting(taken):
            return


class RoundBuilder:
    """Prepares the next round on a thread of its own while the current one samples (the worker's
    main thread calls ``sampling_ended`` then ``result``)."""

    def __init__(self, worker: WarmWorker, after: Queue, running: list[threading.Thread]) -> None:
        self.worker = worker
        #: The queue of the current round: the next round looks at the others first (round robin).
        self.after = after
        #: The current round's job threads (not counted against the job-thread limit).
        self.running = running
        self.round: StartedRound | None = None
        self._ended = threading.Event()
        #: Opens the prepared round's job threads (``StartedRound.go``) once the current one sampled.
        self._go = threading.Event()
        self._thread = threading.Thread(target=self._build, name="latentq-round-builder", daemon=True)

    def start(self) -> RoundBuilder:
        """Start preparing."""
        self._thread.start()
        return self

    def sampling_ended(self) -> None:
        """Note that the current round's sampling is over: gather no more, let the jobs taken start."""
        self._ended.set()
        self._go.set()

    def result(self) -> StartedRound | None:
        """Wait for the builder; return the round it started (None: it took no job)."""
        self.sampling_ended()
        self._thread.join()
        return self.round if self.round is not None and self.round.jobs else None

    def _taking(self) -> bool:
        return not self.worker.stopping and not self._ended.is_set()

    def _pause(self) -> bool:
        """Wait ``POLL_S`` (less if the sampling ends meanwhile); return whether to look again."""
        self._ended.wait(POLL_S)
        return self._taking()

    def _build(self) -> None:
        worker = self.worker
        try:
            if worker.should_run_maintenance_tasks or is_suspended(worker.connection, worker):
                return  # RQ's loop has work to do first
            worker.limit_job_threads(worker.max_batch, besides=self.running)
            claimed = self._claim_head()
            if claimed is None:
                return
            head, queue = claimed
            self.round = StartedRound(queue, go=self._go)
            worker.start_jobs(self.round, [head])  # a job claimed is started, or put back
            lots = take_more(worker, queue, head, lambda _taken: self._pause())
            for lot in lots:
                worker.start_jobs(self.round, lot)
            worker.refill(queue)  # the round after this one finds its jobs queued too
        # The jobs it started form the round (one that failed to start went back to its queue).
        except Exception as error:  # noqa: BLE001 - a Redis error or anything else: the round stands
            worker.log.warning("preparing the next round stopped: %s", error)

    def _claim_head(self) -> tuple[Job, Queue] | None:
        """Claim the oldest job of the first queue (round robin after the current one) that has one,
        looking until the current round's sampling ends."""
        worker = self.worker
        queues = list(worker.queues)
        start = next((index + 1 for index, queue in enumerate(queues) if queue.name == self.after.name), 0)
        queues = queues[start:] + queues[:start]
        for queue in queues:
            worker.refill(queue)  # the accounts' next turns (latentq.fair_share)
        while self._taking():
            for queue in queues:
                head = worker.connection.lindex(queue.key, 0)
                if head is None or not worker.leases.claim(queue.key, [head.decode()])[0]:
                    continue
                job = self._fetch(head.decode(), queue)
                if job is not None:
                    return job, queue
            self._pause()
        return None

    def _fetch(self, job_id: str, queue: Queue) -> Job | None:
        """Return the claimed job ``job_id``. One whose RQ hash is gone is dropped (as RQ's dequeue
        drops it) with its lease; one that cannot be read now goes back to the front of its queue
        (or, if that fails too, its lease, no longer renewed, expires and the reaper puts it back)."""
        worker = self.worker
        try:
            return worker.job_class.fetch(job_id, connection=worker.connection, serializer=worker.serializer)
        except NoSuchJobError:
            with suppress(RedisError):
                worker.leases.release([job_id], only_ended=False)
            return None
        except Exception:
            try:
                worker.connection.lpush(queue.key, job_id)
            finally:
                worker.leases.release([job_id], only_ended=False)
            raise
