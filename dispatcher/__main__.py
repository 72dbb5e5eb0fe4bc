"""The webhook dispatcher process: ``python -m dispatcher`` delivers queued job events until
SIGTERM/SIGINT (the current delivery finishes first).

It is an RQ worker on the ``latentq-webhooks`` queue only (never a GPU worker's queue), with RQ's
scheduler for retries; run several for parallel deliveries. It runs from the API's image.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

from rq import Queue
from rq.executions import Execution
from rq.job import Job
from rq.serializers import JSONSerializer

from dispatcher.delivery import Dispatcher, serving
from latentq.keys import WEBHOOK_QUEUE
from latentq.logs import configure_logging, log_context
from latentq.reaper import Reaper, clear_stale_registration
from latentq.redis_client import redis_client
from latentq.rq_loop import PromptListenerWorker, wait_for_redis, work_through_outages
from latentq.settings import get_dispatcher_settings

log = logging.getLogger("latentq.dispatcher")


class DeliveryWorker(PromptListenerWorker):
    """RQ's ``SimpleWorker`` (deliveries run in this process) that notes a warm shutdown, so that a
    loop ended by a Redis outage starts again and one ended by SIGTERM does not."""

    stopping = False

    def request_stop(self, signum: int, frame: Any) -> None:
        self.stopping = True
        super().request_stop(signum, frame)

    def perform_job(self, job: Job, queue: Queue, execution: Execution) -> bool:
        """Run a delivery with its job's id in the log context: RQ's lines about it carry it too (and
        the account and request id ``deliver`` adds once it has read the job)."""
        with log_context(job_id=job.kwargs.get("job_id") if isinstance(job.kwargs, dict) else None):
            return super().perform_job(job, queue, execution)


def main() -> int:
    """Run the dispatcher until SIGTERM/SIGINT; return its exit code."""
    settings = get_dispatcher_settings()
    configure_logging("dispatcher", settings)
    redis = redis_client(settings)
    wait_for_redis(redis, log)  # started while Redis is down (or not up yet)
    queue = Queue(WEBHOOK_QUEUE, connection=redis, serializer=JSONSerializer)
    worker = DeliveryWorker(
        [queue], connection=redis, serializer=JSONSerializer, name=settings.dispatcher_name
    )
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
    try:
        with serving(dispatcher):
            work_through_outages(
                worker,
                lambda: worker.work(with_scheduler=True, logging_level="INFO"),
                lambda: worker.stopping,
            )
    finally:
        reaper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
