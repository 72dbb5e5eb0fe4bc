"""The webhook dispatcher process: ``python -m dispatcher`` delivers queued job events until
SIGTERM/SIGINT (the current delivery finishes first).

It is an RQ worker on the ``latentq-webhooks`` queue only (never a GPU worker's queue), with RQ's
scheduler for retries; run several for parallel deliveries. It runs from the API's image.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from dispatcher.delivery import Dispatcher, serving
from dispatcher.metrics import REGISTRY
from latentq.keys import WEBHOOK_QUEUE
from latentq.logs import configure_logging, log_context
from latentq.probes import Vitals, serve_probes
from latentq.reaper import Reaper, clear_stale_registration
from latentq.redis_client import redis_client
from latentq.rq_loop import PromptListenerWorker, wait_for_redis, work_through_outages
from latentq.settings import get_dispatcher_settings

log = logging.getLogger("latentq.dispatcher")

#: Seconds beyond its own bound that the delivery loop may take to come round again before /livez
#: says the dispatcher is stuck.
LOOP_SLACK_S = 60.0


class DeliveryWorker(PromptListenerWorker):
    """RQ's ``SimpleWorker`` (deliveries run in this process) that notes a warm shutdown, so that a
    loop ended by a Redis outage starts again and one ended by SIGTERM does not."""

    stopping = False
    #: What its /livez and /readyz answer from (``latentq.probes``); None: no probes.
    vitals: Vitals | None = None
    #: Longest one delivery may take, seconds (it may try two addresses, each up to the timeout).
    delivery_s: float = 20.0

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True
        if self.vitals is not None:
            self.vitals.ready = False
        super().request_stop(signum, frame)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run a delivery with its job's id in the log context: RQ's lines about it carry it too (and
        the account and request id ``deliver`` adds once it has read the job)."""
        with log_context(job_id=job.kwargs.get("job_id") if isinstance(job.kwargs, dict) else None):
            return super().perform_job(job, queue, execution)

    def heartbeat(self, *args: Any, **kwargs: Any) -> None:
        """RQ's worker heartbeat. RQ's loop beats bare before each wait for a delivery (and after
        each): that beat also tells /livez the loop comes round again within the wait and a delivery."""
        if not args and not kwargs and threading.current_thread() is threading.main_thread():
            self._expect_loop()
        super().heartbeat(*args, **kwargs)

    def shutting_down(self) -> bool:
        """Whether a warm shutdown was asked for (asked between loops: waiting for Redis is no stuck loop)."""
        self._expect_loop()
        return self.stopping

    def _expect_loop(self) -> None:
        if self.vitals is not None:
            self.vitals.expect("delivery loop", self.dequeue_timeout + self.delivery_s + LOOP_SLACK_S)


def main() -> int:
    """Run the dispatcher until SIGTERM/SIGINT; return its exit code."""
    settings = get_dispatcher_settings()
    configure_logging("dispatcher", settings)
    vitals = Vitals()  # /livez from now on, /readyz once it takes deliveries (LATENTQ_METRICS_PORT)
    serve_probes(settings, REGISTRY, vitals)
    redis = redis_client(settings)
    wait_for_redis(redis, log)  # started while Redis is down (or not up yet)
    queue = Queue(WEBHOOK_QUEUE, connection=redis, serializer=JSONSerializer)
    worker = DeliveryWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=settings.dispatcher_name
    )
    worker.vitals, worker.delivery_s = vitals, 2 * settings.webhook_timeout_s
    log.info(
        "dispatcher ready on queue %s (retries after %s s)",
        WEBHOOK_QUEUE,
        list(settings.webhook_retry_schedule_s),
    )
    clear_stale_registration(worker)
    dispatcher = Dispatcher.create(settings)
    # Before taking deliveries: those of dispatchers (and jobs of workers) lost meanwhile go back.
    reaper = Reaper(
        dispatcher.records,
        dispatcher.leases,
        settings.max_attempts,
        max(1.0, settings.worker_lost_s / 6),
        dispatcher.store.delete,
    )
    reaper.start()
    vitals.ready = True
    try:
        with serving(dispatcher):
            work_through_outages(
                worker,
                lambda: worker.work(with_scheduler=True, logging_level="INFO"),
                worker.shutting_down,
            )
    finally:
        reaper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
