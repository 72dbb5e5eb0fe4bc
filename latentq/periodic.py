"""Calls made again and again: every few seconds on a daemon thread (heartbeats, lease renewals,
reaper passes), or until they succeed, with backoff (waiting for a service that is down)."""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable


class Periodic:
    """Calls ``call`` every ``interval_s`` seconds on a daemon thread, from ``start`` (or entering a
    ``with`` block) until ``stop``; an exception is handed to ``on_error`` and the calls go on."""

    def __init__(
        self, call: Callable[[], object], interval_s: float, on_error: Callable[[Exception], None], name: str
    ) -> None:
        self.call, self.interval_s, self.on_error = call, interval_s, on_error
        self._stopped = threading.Event()
        # Run in a copy of its maker's context: its log lines name the job it serves (latentq.logs).
        context = contextvars.copy_context()
        self._thread = threading.Thread(target=context.run, args=(self._run,), name=name, daemon=True)

    def start(self) -> Periodic:
        """Start calling."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop calling (waits for a call in progress)."""
        self._stopped.set()
        self._thread.join()

    def __enter__(self) -> Periodic:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            try:
                self.call()
            except Exception as error:  # noqa: BLE001 - one failed call must not end the others
                self.on_error(error)


def call_with_backoff(
    call: Callable[[], object],
    retry_on: Callable[[Exception], bool],
    on_retry: Callable[[Exception, float], None],
    stopped: Callable[[], bool] = lambda: False,
    first_s: float = 0.5,
    max_s: float = 5.0,
) -> bool:
    """Call ``call`` until it returns, waiting ``first_s`` seconds after a failure, twice as long
    after each next one, up to ``max_s``. A failure ``retry_on`` rejects is raised; each other goes
    to ``on_retry`` with the wait. Return False if ``stopped`` turned true first, else True."""
    wait_s = first_s
    while not stopped():
        try:
            call()
            return True
        except Exception as error:
            if not retry_on(error):
                raise
            on_retry(error, wait_s)
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, max_s)
    return False
