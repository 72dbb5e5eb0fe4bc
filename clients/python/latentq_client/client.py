"""The synchronous client: ``Client(base_url, api_key).generate(prompt=...)`` returns a ``Job``."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Unpack

from latentq_client._http import RequestParts, RetryPolicy, Transport, job_path, resolve_connection
from latentq_client.jobs import Job, JobPage
from latentq_client.submissions import (
    GenerateOptions,
    ImageInput,
    UpscaleOptions,
    generate_request,
    list_request,
    upscale_request,
)


class Jobs:
    """``client.jobs``: the caller's jobs (every key of its account sees them)."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    def get(self, job_id: str) -> Job:
        """Return the job ``job_id`` (``NotFoundError`` if there is none, or not the caller's)."""
        return Job(self._transport, self._transport.json(RequestParts("GET", job_path(job_id))))

    def list(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage[Job]:
        """Return one page of the caller's jobs, newest first, of one ``status`` if given."""
        page = self._transport.json(list_request(status, limit, cursor))
        return JobPage([Job(self._transport, data) for data in page["data"]], page.get("next_cursor"))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job ``job_id``; return it, canceled (``ConflictError`` if it had ended)."""
        return Job(self._transport, {"id": job_id}).cancel()


class Client:
    """latentq's API, synchronously. ``base_url`` and ``api_key`` default to ``LATENTQ_URL`` and
    ``LATENTQ_API_KEY``; ``timeout`` is seconds per read; 429, 503 and connection errors are retried
    per ``retry`` (3 tries, exponential backoff, ``Retry-After`` honoured)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        url, key = resolve_connection(base_url, api_key)
        self._transport = Transport(url, key, timeout, retry or RetryPolicy())
        self.jobs = Jobs(self._transport)

    def generate(
        self,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> Job:
        """Submit a text-to-image (or, with ``init_image``, image-to-image) job; return its handle.

        ``idempotency_key``: resend it to get the same job back (one is made per call otherwise).
        """
        return Job(self._transport, self._transport.json(generate_request(prompt, idempotency_key, options)))

    def upscale(
        self, image: ImageInput, *, idempotency_key: str | None = None, **options: Unpack[UpscaleOptions]
    ) -> Job:
        """Submit an upscale of ``image`` (bytes or a path); return the job's handle."""
        return Job(self._transport, self._transport.json(upscale_request(image, idempotency_key, options)))

    def job(self, job_id: str) -> Job:
        """Return the job ``job_id`` (as ``client.jobs.get``)."""
        return self.jobs.get(job_id)

    def models(self) -> list[dict[str, Any]]:
        """Return the registered models (``id``, ``tasks``, ``limits``, ``defaults``, ``workers``...)."""
        return list(self._transport.json(RequestParts("GET", "/v1/models"))["data"])

    def close(self) -> None:
        """Close the client's connections."""
        self._transport.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
