"""The RQ worker class: runs jobs in its own process (no fork) with a heartbeat during each job."""

from __future__ import annotations

import threading
from collections.abc import Callable

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.worker import WorkerStatus


class Heartbeat:
    """Calls ``beat`` every ``interval_s`` seconds on a daemon thread until stopped."""

    def __init__(self, beat: Callable[[], None], interval_s: float, on_error: Callable[[Exception], None]):
        self.beat = beat
        self.interval_s = interval_s
        self.on_error = on_error
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentq-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.beat()
            except Exception as error:  # noqa: BLE001 - a missed beat must not kill the job
                self.on_error(error)


class WarmWorker(SimpleWorker):
    """A ``SimpleWorker`` (jobs run in this process, so the pipeline stays warm and CUDA survives)
    whose job and worker heartbeats continue while sampling blocks the main thread.

    Without them, a long job would look dead to RQ; with them, a worker that really dies stops
    beating and its job is found within ``heartbeat_ttl_s``.
    """

    #: Seconds between heartbeats during a job.
    heartbeat_interval_s: float = 10.0

    def execute_job(self, job: Job, queue: Queue) -> None:
        """Run ``job`` in this process while a background thread keeps its heartbeat."""
        execution = self.prepare_execution(job)
        with Heartbeat(
            lambda: self.maintain_heartbeats(job, execution),
            self.heartbeat_interval_s,
            lambda error: self.log.warning("heartbeat for job %s failed: %s", job.id, error),
        ):
            self.perform_job(job, queue, execution)
        self.set_state(WorkerStatus.IDLE)

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        """Seconds a running job stays alive in RQ's started registry without a new heartbeat."""
        return max(60, int(self.heartbeat_interval_s * 6))
