"""RQ's work loop, kept going through Redis outages.

RQ ends ``Worker.work`` at any unexpected error, a connection lost in the middle of a job among
them (and its clean-up then fails too). A latentq worker or dispatcher instead waits for Redis,
with backoff, registers anew and works again, until it is asked to stop: no restart needed.
"""

from __future__ import annotations

from collections.abc import Callable
from logging import Logger, LoggerAdapter

from redis import Redis
from redis.exceptions import RedisError
from rq import SimpleWorker
from rq.worker import BaseWorker

from latentq.periodic import call_with_backoff

#: Seconds each read of an RQ worker's command listener (its pub/sub thread) waits. RQ waits 60 s:
#: when that thread has already read the reply to its own UNSUBSCRIBE at a warm shutdown, its next
#: read waits that long for a subscription that never comes, and the shutdown with it (redis-py
#: joins the thread), past the drain deadline.
LISTENER_READ_S = 1.0


class PromptListenerWorker(SimpleWorker):
    """RQ's ``SimpleWorker`` whose command listener reads in waits of ``LISTENER_READ_S``, so a
    warm shutdown stops it within that time."""

    def subscribe(self) -> None:
        """Listen on this worker's command channel (RQ's ``subscribe`` with shorter reads)."""
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        # RQ declares pubsub_thread as None only, hence the ignore below.
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=LISTENER_READ_S, daemon=True, exception_handler=self._pubsub_exception_handler
        )


def until_redis_takes(
    call: Callable[[], object], log: Logger | LoggerAdapter, stopping: Callable[[], bool] = lambda: False
) -> bool:
    """Call ``call`` until Redis takes it, trying again after 0.5 s, doubling up to 5 s, logging
    each miss; return False if ``stopping()`` turned true first."""
    return call_with_backoff(
        call,
        lambda error: isinstance(error, RedisError | OSError),
        lambda error, wait_s: log.warning("waiting for Redis (%s); next try in %.1f s", error, wait_s),
        stopping,
    )


def wait_for_redis(
    redis: Redis, log: Logger | LoggerAdapter, stopping: Callable[[], bool] = lambda: False
) -> bool:
    """Wait until ``redis`` answers (``until_redis_takes``)."""
    return until_redis_takes(redis.ping, log, stopping)


def work_through_outages(
    worker: BaseWorker, work: Callable[[], object], stopping: Callable[[], bool]
) -> None:
    """Call ``work`` (the worker's ``work`` with its options) again each time it ends, until
    ``stopping()``; after a loop that ended without Redis, first wait until Redis answers."""
    while True:
        try:
            work()
        except (RedisError, OSError) as error:  # its clean-up could not reach Redis either
            worker.log.warning("worker loop ended: Redis unreachable (%s)", error)
        if stopping():
            return
        # The registration the broken loop left must be marked dead before RQ registers anew (it
        # refuses a live one of the same name): tried until Redis takes it.
        if until_redis_takes(worker.register_death, worker.log, stopping):
            worker.log.info("Redis answers: taking jobs again")
