"""Job handles: ``Job`` (sync) and ``AsyncJob`` follow one job through its event stream, cancel it and
fetch its images; what they share (the job's fields, the stream's request, file names) is in
``JobView``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import httpx

from latentq_client._http import AsyncTransport, RequestParts, Transport, connection_error, job_path
from latentq_client.errors import (
    APIConnectionError,
    JobFailedError,
    NotFoundError,
    WaitTimeoutError,
    error_from_answer,
)
from latentq_client.events import Event, EventParser

#: Statuses a job never leaves.
FINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
#: Seconds ``wait`` waits when given no timeout.
DEFAULT_WAIT_S = 600.0
#: Longest read on an event stream, seconds: the API sends a keep-alive every 2 s, so a longer
#: silence means a lost connection, which is then resumed.
STREAM_READ_S = 30.0
#: File extension of each image type the API makes.
EXTENSIONS = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp"}


class JobView:
    """A job as the API last showed it (``data``: ``GET /v1/jobs/{id}``'s JSON), and what the sync
    and async handles compute from it alike."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.status}>"

    @property
    def id(self) -> str:
        """The job's id."""
        return str(self.data["id"])

    @property
    def status(self) -> str:
        """``queued``, ``running``, ``succeeded``, ``failed`` or ``canceled``."""
        return str(self.data.get("status", "queued"))

    @property
    def done(self) -> bool:
        """Whether the job has ended (succeeded, failed or canceled)."""
        return self.status in FINAL_STATUSES

    @property
    def error(self) -> dict[str, Any] | None:
        """A failed job's ``{"name", "message"}``, else None."""
        return self.data.get("error")

    @property
    def progress(self) -> dict[str, Any] | None:
        """``{"step", "total_steps", "fraction"}`` once sampling has begun, else None."""
        return self.data.get("progress")

    @property
    def image_info(self) -> list[dict[str, Any]]:
        """A succeeded job's images: ``{"url", "seed", "width", "height", "content_type", "nsfw",
        "filtered"}`` each (``nsfw``/``filtered``: the model's safety checker's verdict)."""
        return list(self.data.get("images") or [])

    def _take(self, event: Event) -> None:
        """Learn from ``event``: a terminal event's data is the final job; ``error`` is raised."""
        if event.name == "error":
            raise error_from_answer(401, event.data)
        if event.name == "expired":
            raise NotFoundError("not_found", f"job {self.id} has expired (its retention is over)")
        if event.name in FINAL_STATUSES and event.data.get("id") == self.id:
            self.data = event.data

    def _events_request(self, last_event_id: str | None, deadline: float | None) -> RequestParts:
        """Return the request of the job's event stream, resumed after ``last_event_id``."""
        headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
        remaining = STREAM_READ_S if deadline is None else deadline - time.monotonic()
        timeout = min(max(remaining, 0.5), STREAM_READ_S)
        return RequestParts("GET", job_path(self.id, "events"), headers=headers, timeout=timeout)

    def _check(self, deadline: float | None) -> None:
        """Raise ``WaitTimeoutError`` once ``deadline`` (``time.monotonic()``) has passed."""
        if deadline is not None and time.monotonic() >= deadline:
            message = f"job {self.id} is still {self.status}; it goes on (wait again, or cancel it)"
            raise WaitTimeoutError("wait_timeout", message)

    def _stream_lost(
        self, deadline: float | None, failures: int, max_attempts: int, error: httpx.TransportError | None
    ) -> None:
        """Decide after the event stream ended before the job (``error``: how, None: closed by the
        server): resume it, unless past ``deadline`` or after ``max_attempts`` losses in a row."""
        self._check(deadline)
        if failures < max_attempts:
            return
        if error is not None:
            raise connection_error(error) from error
        raise APIConnectionError("connection_error", f"the event stream of job {self.id} keeps ending early")

    def _succeeded_images(self) -> list[dict[str, Any]]:
        """Return the images of the job, ended; raise ``JobFailedError`` unless it succeeded."""
        if self.status == "succeeded":
            return self.image_info
        error = self.error or {"name": "job_canceled", "message": f"job {self.id} was canceled"}
        raise JobFailedError(str(error.get("name")), str(error.get("message")), details=error)

    def _file_path(self, directory: Path, index: int, image: dict[str, Any]) -> Path:
        """Return where image ``index`` is saved: ``{directory}/{job_id}-{index}.{ext}``."""
        extension = EXTENSIONS.get(str(image.get("content_type")), "png")
        return directory / f"{self.id}-{index}.{extension}"


def deadline_after(timeout_s: float | None) -> float | None:
    """Return the ``time.monotonic()`` at which ``timeout_s`` seconds from now have passed."""
    return None if timeout_s is None else time.monotonic() + timeout_s


class Job(JobView):
    """A submitted job: follow it (``events``, ``wait``), ``cancel`` it, fetch its ``images``."""

    def __init__(self, transport: Transport, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._transport = transport

    def refresh(self) -> Job:
        """Read the job again (``GET /v1/jobs/{id}``); return it."""
        self.data = self._transport.json(RequestParts("GET", job_path(self.id)))
        return self

    def events(self, timeout: float | None = None) -> Iterator[Event]:
        """Yield the job's events from its first, until its terminal one; a lost connection is resumed
        where it stopped. ``timeout``: seconds before ``WaitTimeoutError`` (None: no limit)."""
        deadline, last_id, failures = deadline_after(timeout), None, 0
        while True:
            response = self._transport.send(self._events_request(last_id, deadline), stream=True)
            lost: httpx.TransportError | None = None
            try:
                parser = EventParser()
                for line in response.iter_lines():
                    self._check(deadline)
                    if (event := parser.feed(line)) is None:
                        continue
                    last_id, failures = event.id or last_id, 0
                    self._take(event)
                    yield event
                    if event.terminal:
                        return
            except httpx.TransportError as error:
                lost = error
            finally:
                response.close()
            failures += 1
            self._stream_lost(deadline, failures, self._transport.policy.max_attempts, lost)

    def wait(self, timeout: float | None = DEFAULT_WAIT_S) -> Job:
        """Wait until the job ends (however it ends) and return it; raise ``WaitTimeoutError`` after
        ``timeout`` seconds (None: no limit)."""
        if not self.done:
            for _ in self.events(timeout):
                pass
        return self

    def cancel(self) -> Job:
        """Cancel the job (``ConflictError`` ``job_finished`` if it had ended); return it, canceled."""
        self.data = self._transport.json(RequestParts("POST", job_path(self.id, "cancel")))
        return self

    def images(self, timeout: float | None = DEFAULT_WAIT_S) -> list[bytes]:
        """Return the bytes of each image, waiting for the job first; ``JobFailedError`` unless it
        succeeded."""
        return [self._transport.download(image["url"]) for image in self.wait(timeout)._succeeded_images()]

    def save(self, directory: str | Path = ".", timeout: float | None = DEFAULT_WAIT_S) -> list[Path]:
        """Write each image to ``{directory}/{job_id}-{n}.{ext}`` (made if missing); return the paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        contents = self.images(timeout)
        paths = [self._file_path(folder, index, image) for index, image in enumerate(self.image_info)]
        for path, data in zip(paths, contents, strict=True):
            path.write_bytes(data)
        return paths


class AsyncJob(JobView):
    """A submitted job, with async methods: ``async for event in job.events()``, ``await job.wait()``."""

    def __init__(self, transport: AsyncTransport, data: dict[str, Any]) -> None:
        super().__init__(data)
        self._transport = transport

    async def refresh(self) -> AsyncJob:
        """Read the job again (``GET /v1/jobs/{id}``); return it."""
        self.data = await self._transport.json(RequestParts("GET", job_path(self.id)))
        return self

    async def events(self, timeout: float | None = None) -> AsyncIterator[Event]:
        """Yield the job's events from its first, until its terminal one; a lost connection is resumed
        where it stopped. ``timeout``: seconds before ``WaitTimeoutError`` (None: no limit)."""
        deadline, last_id, failures = deadline_after(timeout), None, 0
        while True:
            response = await self._transport.send(self._events_request(last_id, deadline), stream=True)
            lost: httpx.TransportError | None = None
            try:
                parser = EventParser()
                async for line in response.aiter_lines():
                    self._check(deadline)
                    if (event := parser.feed(line)) is None:
                        continue
                    last_id, failures = event.id or last_id, 0
                    self._take(event)
                    yield event
                    if event.terminal:
                        return
            except httpx.TransportError as error:
                lost = error
            finally:
                await response.aclose()
            failures += 1
            self._stream_lost(deadline, failures, self._transport.policy.max_attempts, lost)

    async def wait(self, timeout: float | None = DEFAULT_WAIT_S) -> AsyncJob:
        """Wait until the job ends (however it ends) and return it; raise ``WaitTimeoutError`` after
        ``timeout`` seconds (None: no limit)."""
        if not self.done:
            async for _ in self.events(timeout):
                pass
        return self

    async def cancel(self) -> AsyncJob:
        """Cancel the job (``ConflictError`` ``job_finished`` if it had ended); return it, canceled."""
        self.data = await self._transport.json(RequestParts("POST", job_path(self.id, "cancel")))
        return self

    async def images(self, timeout: float | None = DEFAULT_WAIT_S) -> list[bytes]:
        """Return the bytes of each image (fetched at once), waiting for the job first;
        ``JobFailedError`` unless it succeeded."""
        images = (await self.wait(timeout))._succeeded_images()
        return list(await asyncio.gather(*(self._transport.download(image["url"]) for image in images)))

    async def save(self, directory: str | Path = ".", timeout: float | None = DEFAULT_WAIT_S) -> list[Path]:
        """Write each image to ``{directory}/{job_id}-{n}.{ext}`` (made if missing); return the paths."""
        folder = Path(directory)
        folder.mkdir(parents=True, exist_ok=True)
        contents = await self.images(timeout)
        paths = [self._file_path(folder, index, image) for index, image in enumerate(self.image_info)]
        for path, data in zip(paths, contents, strict=True):
            path.write_bytes(data)
        return paths


JobHandle = TypeVar("JobHandle", Job, AsyncJob)


@dataclass
class JobPage(Generic[JobHandle]):
    """One page of ``GET /v1/jobs``: the caller's jobs, newest first; ``next_cursor`` asks for the next."""

    jobs: list[JobHandle]
    next_cursor: str | None

    def __iter__(self) -> Iterator[JobHandle]:
        return iter(self.jobs)

    def __len__(self) -> int:
        return len(self.jobs)
