"""The asynchronous client: ``await AsyncClient(base_url, api_key).generate(prompt=...)`` returns an
``AsyncJob``; the same surface as ``Client``, built from the same request helpers."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Unpack

from latentq_client._http import AsyncTransport, RequestParts, RetryPolicy, job_path, resolve_connection
from latentq_client.jobs import AsyncJob, JobPage
from latentq_client.submissions import (
    GenerateOptions,
    ImageInput,
    UpscaleOptions,
    generate_request,
    list_request,
    upscale_request,
)


class AsyncJobs:
    """``client.jobs``: the caller's jobs (every key of its account sees them)."""

    def __init__(self, transport: AsyncTransport) -> None:
        self._transport = transport

    async def get(self, job_id: str) -> AsyncJob:
        """Return the job ``job_id`` (``NotFoundError`` if there is none, or not the caller's)."""
        return AsyncJob(self._transport, await self._transport.json(RequestParts("GET", job_path(job_id))))

    async def list(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> JobPage[AsyncJob]:
        """Return one page of the caller's jobs, newest first, of one ``status`` if given."""
        page = await self._transport.json(list_request(status, limit, cursor))
        return JobPage([AsyncJob(self._transport, data) for data in page["data"]], page.get("next_cursor"))

    async def cancel(self, job_id: str) -> AsyncJob:
        """Cancel the job ``job_id``; return it, canceled (``ConflictError`` if it had ended)."""
        return await AsyncJob(self._transport, {"id": job_id}).cancel()


class AsyncClient:
    """latentq's API, asynchronously (see ``Client`` for the arguments)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        timeout: float = 60.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        url, key = resolve_connection(base_url, api_key)
        self._transport = AsyncTransport(url, key, timeout, retry or RetryPolicy())
        self.jobs = AsyncJobs(self._transport)

    async def generate(
        self,
        prompt: str | None = None,
        *,
        idempotency_key: str | None = None,
        **options: Unpack[GenerateOptions],
    ) -> AsyncJob:
        """Submit a text-to-image (or, with ``init_image``, image-to-image) job; return its handle."""
        request = generate_request(prompt, idempotency_key, options)
        return AsyncJob(self._transport, await self._transport.json(request))

    async def upscale(
        self, image: ImageInput, *, idempotency_key: str | None = None, **options: Unpack[UpscaleOptions]
    ) -> AsyncJob:
        """Submit an upscale of ``image`` (bytes or a path); return the job's handle."""
        request = upscale_request(image, idempotency_key, options)
        return AsyncJob(self._transport, await self._transport.json(request))

    async def job(self, job_id: str) -> AsyncJob:
        """Return the job ``job_id`` (as ``client.jobs.get``)."""
        return await self.jobs.get(job_id)

    async def models(self) -> list[dict[str, Any]]:
        """Return the registered models (``id``, ``tasks``, ``limits``, ``defaults``, ``workers``...)."""
        return list((await self._transport.json(RequestParts("GET", "/v1/models")))["data"])

    async def close(self) -> None:
        """Close the client's connections."""
        await self._transport.close()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        await self.close()
