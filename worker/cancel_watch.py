"""The worker's cancel watch: running jobs learn of their cancel with no Redis call while sampling.

A cancel request sets the job's cancel flag and announces the job id on ``CANCEL_CHANNEL``
(``JobRecords.request_cancel``). One thread per worker process listens on that channel and sets
the ``threading.Event`` of each job it watches when its id comes by, so a denoising step only reads
a local flag instead of making a Redis round trip at every step (one per member per step in a
batch; what that cost is in docs/BENCHMARKS.md).

No cancel is missed: the watch subscribes before the worker takes jobs; a job is watched before it
checks its flag at start (a request made before that is seen there, one made after is announced
to the watch); and every ``poll_s`` the thread also reads the flags of the jobs it watches, which
covers announcements lost while the pub/sub connection was down (or not yet subscribed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from redis.exceptions import RedisError

from latentq.keys import CANCEL_CHANNEL
from latentq.records import JobRecords

log = logging.getLogger("latentq.worker")


class CancelWatch:
    """Sets a watched job's event when its cancel is requested (``start`` it before taking jobs)."""

    def __init__(self, records: JobRecords, poll_s: float = 1.0) -> None:
        self.records = records
        self.poll_s = poll_s
        self._pubsub = records.redis.pubsub(ignore_subscribe_messages=True)
        self._watched: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name="latentq-cancel-watch", daemon=True)

    def start(self) -> CancelWatch:
        """Subscribe to the announcements and start listening."""
        self._pubsub.subscribe(CANCEL_CHANNEL)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening."""
        self._stopped.set()
        self._thread.join()
        self._pubsub.close()

    @contextmanager
    def watching(self, job_id: str) -> Iterator[threading.Event]:
        """Watch ``job_id`` for the ``with`` block; yield the event its cancel request sets."""
        event = threading.Event()
        with self._lock:
            self._watched[job_id] = event
        try:
            yield event
        finally:
            with self._lock:
                self._watched.pop(job_id, None)

    def _run(self) -> None:
        polled = time.monotonic()
        while not self._stopped.is_set():
            try:
                message = self._pubsub.get_message(timeout=self.poll_s)
                if message is not None and message["type"] == "message":
                    self._cancel([message["data"].decode()])
                if time.monotonic() - polled >= self.poll_s:
                    polled = time.monotonic()
                    with self._lock:
                        watched = list(self._watched)
                    if watched:
                        self._cancel(self.records.cancel_requested(*watched))
            except (RedisError, OSError) as error:  # Redis away: retry; jobs fail on their own calls
                log.warning("cancel watch: %s; retrying", error)
                self._stopped.wait(self.poll_s)

    def _cancel(self, job_ids: list[str]) -> None:
        with self._lock:
            for job_id in job_ids:
                if job_id in self._watched:
                    self._watched[job_id].set()
