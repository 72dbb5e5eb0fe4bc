"""The webhook dispatcher process: ``python -m dispatcher`` delivers queued job events until
SIGTERM/SIGINT (the current delivery finishes first).

It is an RQ worker on the ``latentq-webhooks`` queue only (never a GPU worker's queue), with RQ's
scheduler for retries; run several for parallel deliveries. It runs from the API's image.
"""

from __future__ import annotations

import logging
import sys

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue, SimpleWorker
from rq.serializers import JSONSerializer

from dispatcher.delivery import Dispatcher, serving
from latentq.keys import WEBHOOK_QUEUE
from latentq.periodic import call_with_backoff
from latentq.reaper import Reaper, clear_stale_registration
from latentq.settings import get_dispatcher_settings

log = logging.getLogger("latentq.dispatcher")


def main() -> int:
    """Run the dispatcher until SIGTERM/SIGINT; return its exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_dispatcher_settings()
    redis = Redis.from_url(settings.redis_url)
    call_with_backoff(  # started while Redis is down (or not up yet): wait for it
        redis.ping,
        lambda error: isinstance(error, RedisError | OSError),
        lambda error, wait_s: log.warning("waiting for Redis (%s); next try in %.1f s", error, wait_s),
    )
    queue = Queue(WEBHOOK_QUEUE, connection=redis, serializer=JSONSerializer)
    worker = SimpleWorker([queue], connection=redis, serializer=JSONSerializer, name=settings.dispatcher_name)
    log.info(
        "dispatcher ready on queue %s (retries after %s s)",
        WEBHOOK_QUEUE,
        list(settings.webhook_retry_schedule_s),
    )
    clear_stale_registration(worker)
    dispatcher = Dispatcher.create(settings)
    # Before taking deliveries: those of dispatchers (and jobs of workers) lost meanwhile go back.
    reaper = Reaper(
        dispatcher.records, dispatcher.leases, settings.max_attempts, max(1.0, settings.worker_lost_s / 6)
    )
    reaper.start()
    try:
        with serving(dispatcher):
            worker.work(with_scheduler=True, logging_level="INFO")
    finally:
        reaper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
