"""The HTTP transport: authenticated requests to the API, retried with backoff on 429, 503 and
connection errors, and error answers turned into typed exceptions. One sync and one async class
share every decision (what to retry, how long to wait, which exception) through pure helpers."""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx

from latentq_client import __version__
from latentq_client.errors import APIConnectionError, AuthenticationError, LatentqError, error_from_answer

#: Statuses worth another try: the API says so with ``Retry-After`` (rate limits, full queues, outages).
RETRY_STATUSES = frozenset({429, 503})
USER_AGENT = f"latentq-client/{__version__}"
#: Where the API is when neither ``base_url`` nor ``LATENTQ_URL`` says (``make run``'s address).
DEFAULT_URL = "http://localhost:8000"


def resolve_connection(base_url: str | None, api_key: str | None) -> tuple[str, str]:
    """Return the API's URL and key: as given, else ``LATENTQ_URL`` and ``LATENTQ_API_KEY``."""
    url = base_url or os.environ.get("LATENTQ_URL") or DEFAULT_URL
    key = api_key or os.environ.get("LATENTQ_API_KEY")
    if not key:
        raise AuthenticationError("missing_api_key", "no API key: pass api_key or set LATENTQ_API_KEY")
    return url.rstrip("/"), key


def job_path(job_id: str, *action: str) -> str:
    """Return the path of job ``job_id`` (escaped: an id is the caller's text), or of its ``action``."""
    return "/".join(("/v1/jobs", quote(job_id, safe=""), *action))


@dataclass(frozen=True)
class RetryPolicy:
    """How often and how long to retry: exponential backoff, ``Retry-After`` honoured up to a cap."""

    #: Tries in all, the first included.
    max_attempts: int = 3
    #: Seconds before the second try when the API names none; doubled at each further try.
    backoff_s: float = 0.5
    #: Longest wait between two tries, seconds; a ``Retry-After`` past it is not waited for.
    max_backoff_s: float = 30.0


def retry_after_seconds(headers: httpx.Headers) -> float | None:
    """Return the seconds a ``Retry-After`` header asks for (delay-seconds or HTTP-date), or None."""
    value = headers.get("retry-after")
    if not value:
        return None
    if value.strip().isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def retry_delay(policy: RetryPolicy, attempt: int, retry_after_s: float | None = None) -> float | None:
    """Return the seconds to wait before try ``attempt + 1``, or None when no try is left (or the
    API asks for a wait longer than the policy's cap)."""
    if attempt >= policy.max_attempts:
        return None
    if retry_after_s is not None:
        return retry_after_s if retry_after_s <= policy.max_backoff_s else None
    return min(policy.backoff_s * 2 ** (attempt - 1), policy.max_backoff_s)


def may_resend(error: httpx.TransportError, idempotent: bool) -> bool:
    """Return whether a request that met ``error`` may be sent again: always when it was never sent
    (no connection), otherwise only when sending it twice does no harm."""
    return idempotent or isinstance(error, httpx.ConnectError | httpx.ConnectTimeout)


def answer_error(response: httpx.Response) -> LatentqError:
    """Return the typed exception of an error answer (its body already read)."""
    try:
        body: Any = response.json()
    except ValueError:
        body = response.text
    return error_from_answer(response.status_code, body, retry_after_seconds(response.headers))


def connection_error(error: httpx.TransportError) -> APIConnectionError:
    """Return the exception of a request that never got an answer."""
    return APIConnectionError("connection_error", f"{type(error).__name__}: {error}")


@dataclass(frozen=True)
class RequestParts:
    """One API request, kept whole so every retry sends the same (the same ``Idempotency-Key`` too)."""

    method: str
    path: str
    json: Any = None
    params: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    #: Seconds per read (None: the client's default).
    timeout: float | None = None

    @property
    def idempotent(self) -> bool:
        """Whether sending it twice does no harm: reads, and submits carrying an ``Idempotency-Key``."""
        return self.method == "GET" or "Idempotency-Key" in (self.headers or {})


def next_delay(
    policy: RetryPolicy,
    attempt: int,
    parts: RequestParts,
    response: httpx.Response | None = None,
    error: httpx.TransportError | None = None,
) -> float:
    """Return the seconds before the next try of ``parts`` after try ``attempt`` got the error
    ``response`` (read) or met ``error``; raise the exception that ends the tries when none is left."""
    if error is not None:
        delay = retry_delay(policy, attempt) if may_resend(error, parts.idempotent) else None
        if delay is None:
            raise connection_error(error) from error
        return delay
    assert response is not None
    raised = answer_error(response)
    retryable = response.status_code in RETRY_STATUSES
    delay = retry_delay(policy, attempt, raised.retry_after_s) if retryable else None
    if delay is None:
        raise raised
    return delay


def build_request(http: httpx.Client | httpx.AsyncClient, api_key: str, parts: RequestParts) -> httpx.Request:
    """Return the httpx request of ``parts``, authenticated with ``api_key``."""
    # The key goes on each API request, not on the client, so image downloads from presigned S3
    # URLs (signed already) carry none.
    headers = {"Authorization": f"Bearer {api_key}", **(parts.headers or {})}
    params = {key: value for key, value in (parts.params or {}).items() if value is not None}
    timeout = httpx.USE_CLIENT_DEFAULT if parts.timeout is None else httpx.Timeout(parts.timeout)
    return http.build_request(
        parts.method, parts.path, json=parts.json, params=params, headers=headers, timeout=timeout
    )


def make_timeout(seconds: float) -> httpx.Timeout:
    """Return the client's timeouts: ``seconds`` per read, connecting within 10 s at most."""
    return httpx.Timeout(seconds, connect=min(seconds, 10.0))


class Transport:
    """Sends API requests with ``httpx.Client``, retrying per its ``RetryPolicy``."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float, policy: RetryPolicy) -> None:
        self.api_key = api_key
        self.policy = policy
        self.http = httpx.Client(
            base_url=base_url, timeout=make_timeout(timeout_s), headers={"User-Agent": USER_AGENT}
        )

    def send(self, parts: RequestParts, stream: bool = False) -> httpx.Response:
        """Send ``parts`` and return the successful answer (unread when ``stream``); raise the
        typed exception of an error answer once no retry is left."""
        attempt = 1
        while True:
            try:
                response = self.http.send(build_request(self.http, self.api_key, parts), stream=stream)
            except httpx.TransportError as error:
                delay = next_delay(self.policy, attempt, parts, error=error)
            else:
                if response.status_code < 400:
                    return response
                response.read()
                response.close()
                delay = next_delay(self.policy, attempt, parts, response=response)
            time.sleep(delay)
            attempt += 1

    def json(self, parts: RequestParts) -> Any:
        """Send ``parts`` and return the answer's JSON."""
        return self.send(parts).json()

    def download(self, url: str) -> bytes:
        """Return the bytes at ``url`` (a presigned image URL: no API key is sent)."""
        try:
            response = self.http.get(url)
        except httpx.TransportError as error:
            raise connection_error(error) from error
        if response.status_code >= 400:
            raise answer_error(response)
        return response.content

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()


class AsyncTransport:
    """Sends API requests with ``httpx.AsyncClient``, retrying per its ``RetryPolicy``."""

    def __init__(self, base_url: str, api_key: str, timeout_s: float, policy: RetryPolicy) -> None:
        self.api_key = api_key
        self.policy = policy
        self.http = httpx.AsyncClient(
            base_url=base_url, timeout=make_timeout(timeout_s), headers={"User-Agent": USER_AGENT}
        )

    async def send(self, parts: RequestParts, stream: bool = False) -> httpx.Response:
        """Send ``parts`` and return the successful answer (unread when ``stream``); raise the
        typed exception of an error answer once no retry is left."""
        attempt = 1
        while True:
            try:
                request = build_request(self.http, self.api_key, parts)
                response = await self.http.send(request, stream=stream)
            except httpx.TransportError as error:
                delay = next_delay(self.policy, attempt, parts, error=error)
            else:
                if response.status_code < 400:
                    return response
                await response.aread()
                await response.aclose()
                delay = next_delay(self.policy, attempt, parts, response=response)
            await asyncio.sleep(delay)
            attempt += 1

    async def json(self, parts: RequestParts) -> Any:
        """Send ``parts`` and return the answer's JSON."""
        return (await self.send(parts)).json()

    async def download(self, url: str) -> bytes:
        """Return the bytes at ``url`` (a presigned image URL: no API key is sent)."""
        try:
            response = await self.http.get(url)
        except httpx.TransportError as error:
            raise connection_error(error) from error
        if response.status_code >= 400:
            raise answer_error(response)
        return response.content

    async def close(self) -> None:
        """Close the connection pool."""
        await self.http.aclose()
