"""Storage calls that outlast a short S3 outage: each failed call is tried again, waiting longer
each time, for as long as the job's deadline leaves room; then the last error stands (the job
ends ``storage_error`` and the worker goes on)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from botocore.exceptions import ClientError

from latentq.storage import STORAGE_ERRORS
from worker.context import ObjectStore

log = logging.getLogger("latentq.worker")

#: Seconds before the first retry of a failed storage call; each next wait doubles, up to
#: ``RETRY_MAX_S``.
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 8.0

Result = TypeVar("Result")


#: S3 error codes worth trying again (the service is busy or briefly unwell), beside any 5xx.
TRANSIENT_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout",
                             "RequestTimeTooSkewed", "ServiceUnavailable", "InternalError"})  # fmt: skip


def transient(error: Exception) -> bool:
    """Whether a failed storage call may succeed when tried again: no answer at all (connection,
    timeout), a 5xx, or throttling; not a refusal (403, 404, a missing bucket)."""
    if not isinstance(error, ClientError):
        return True  # BotoCoreError: no answer from the service (connection refused, timeout, ...)
    details = error.response.get("Error", {})
    status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return status >= 500 or details.get("Code") in TRANSIENT_CODES


class PatientStore:
    """``store``, its calls retried with backoff until ``deadline`` (``clock`` seconds)."""

    def __init__(
        self,
        store: ObjectStore,
        deadline: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.store, self.deadline, self.clock, self.sleep = store, deadline, clock, sleep

    def put(self, key: str, data: bytes, content_type: str) -> None:
        """Store ``data`` under ``key``."""
        self._patiently(lambda: self.store.put(key, data, content_type), f"put {key}")

    def get(self, key: str) -> bytes:
        """Return the bytes stored under ``key``."""
        return self._patiently(lambda: self.store.get(key), f"get {key}")

    def delete(self, keys: list[str]) -> None:
        """Delete the objects under ``keys``."""
        self._patiently(lambda: self.store.delete(keys), f"delete {len(keys)} objects")

    def _patiently(self, call: Callable[[], Result], what: str) -> Result:
        wait_s = RETRY_FIRST_S
        while True:
            try:
                return call()
            except STORAGE_ERRORS as error:
                if not transient(error) or self.clock() + wait_s >= self.deadline:
                    raise
                log.warning("storage: %s failed (%s); retrying in %.1f s", what, error, wait_s)
                self.sleep(wait_s)
                wait_s = min(wait_s * 2, RETRY_MAX_S)
