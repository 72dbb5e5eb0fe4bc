"""A job's events as Server-Sent Events: ``GET /v1/jobs/{id}/events``.

Events come from the job's Redis Stream (written with the job record): ``queued``,
``started``, ``progress`` (``{"step", "total_steps"}``), then one terminal event, ``succeeded``,
``failed`` or ``canceled``, whose data is the final job, after which the stream ends. Each event's
``id`` is its stream id: a client reconnecting with ``Last-Event-ID`` resumes after it, losing
nothing; a client connecting late first receives everything so far. Streams block on Redis
(``XREAD BLOCK``) without holding a thread. A stream whose API key stops being valid (revoked,
expired) ends within a few seconds with an ``error`` event (``{"error": {"name": "unauthorized",
...}}``), as the key's next request would be refused.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse
from redis.asyncio import Redis as AsyncRedis
from redis.exceptions import RedisError
from starlette.concurrency import run_in_threadpool
from starlette.types import Receive, Scope, Send

from api.deps import CallerDep, bearer_token
from api.job_lookup import find_record
from api.waiting import RECHECK_S, job_ended
from latentq.errors import LatentqError
from latentq.keys import job_events_key
from latentq.records import JobRecords
from latentq.storage import ImageStore
from latentq.transitions import TERMINAL_EVENTS
from latentq.views import job_public

#: A Redis stream id (``<ms>-<seq>``), or ``0`` for "from the start": what ``Last-Event-ID`` may say.
STREAM_ID = re.compile(r"0|\d{1,20}-\d{1,20}")

router = APIRouter(prefix="/v1", tags=["jobs"])

#: Seconds a job's terminal event, once made, is shared by its other streams.
FINAL_EVENT_SHARED_S = 5.0
_final_events: dict[tuple[str, str], asyncio.Future[str]] = {}


def sse(event_id: str, event: str, data: str) -> str:
    """Return one Server-Sent Event."""
    return f"id: {event_id}\nevent: {event}\ndata: {data}\n\n"


@router.get(
    "/jobs/{job_id}/events",
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "The job's events"}},
)
async def job_events(
    job_id: str,
    request: Request,
    caller: CallerDep,
) -> StreamingResponse:
    """Stream a job's events until its terminal one (see the module docstring)."""
    services = caller.services
    await run_in_threadpool(find_record, job_id, services.records, caller.owner)
    last = request.headers.get("last-event-id") or "0"
    if not STREAM_ID.fullmatch(last):
        raise LatentqError.for_field(
            "invalid_request", "Last-Event-ID", "Last-Event-ID must be the id of an event of this stream."
        )
    token = bearer_token(request.headers)

    async def key_valid() -> bool:
        try:
            await services.keyring.authenticate(token)  # cached for a second: cheap per stream
        except LatentqError:
            return False
        except RedisError:
            return True  # the stream's own reads meet the outage
        return True

    services.slots.take(caller.owner)
    return SlotStreamingResponse(
        event_stream(services.wait_redis, services.records, services.store, job_id, last, key_valid),
        on_close=lambda: services.slots.give_back(caller.owner),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


class SlotStreamingResponse(StreamingResponse):
    """A streaming answer that calls ``on_close`` once it is over, however it ended (the job's end,
    the client leaving, even before its first byte): the stream's slot is given back then."""

    def __init__(self, content: AsyncIterator[str], on_close: Callable[[], None], **options: Any) -> None:
        super().__init__(content, **options)
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


async def event_stream(
    redis: AsyncRedis,
    records: JobRecords,
    store: ImageStore,
    job_id: str,
    last: str,
    key_valid: Callable[[], Awaitable[bool]],
) -> AsyncIterator[str]:
    """Yield the job's events after stream id ``last``, ending with its terminal event, or with an
    ``error`` event once ``key_valid`` says the caller's key is no longer valid."""
    key = job_events_key(job_id)
    while True:
        answer: Any = await redis.xread({key: last}, block=int(RECHECK_S * 1000), count=100)
        if not await key_valid():
            refused = LatentqError("unauthorized", "The API key is no longer valid (revoked or expired).")
            yield sse(last, "error", json.dumps({"error": refused.to_dict()}))
            return
        if not answer:
            # No event for a while: a worker that died leaves no terminal event, but its record
            # reads as failed (worker_lost) once RQ notices; end the stream with it.
            if await job_ended(redis, job_id):
                yield await final_event(records, store, job_id, last)
                return
            yield ": waiting\n\n"
            continue
        for entry_id, fields in answer[0][1]:
            last = entry_id.decode()
            event = fields[b"event"].decode()
            if event in TERMINAL_EVENTS:
                yield await final_event(records, store, job_id, last)
                return
            yield sse(last, event, fields.get(b"data", b"{}").decode())


async def final_event(records: JobRecords, store: ImageStore, job_id: str, event_id: str) -> str:
    """Return the terminal event: the final job (with fresh image URLs) as its data.

    Every stream of a job ends with the same event, so it is made once and shared by the streams
    that ask within ``FINAL_EVENT_SHARED_S``: hundreds of followers cost one record read.
    """
    key = (job_id, event_id)
    shared = _final_events.get(key)
    if shared is None:
        shared = asyncio.ensure_future(_final_event(records, store, job_id, event_id))
        _final_events[key] = shared
        asyncio.get_running_loop().call_later(FINAL_EVENT_SHARED_S, _final_events.pop, key, None)
    return await asyncio.shield(shared)


async def _final_event(records: JobRecords, store: ImageStore, job_id: str, event_id: str) -> str:
    record = await run_in_threadpool(records.get, job_id)
    if record is None:
        return sse(event_id, "expired", "{}")
    job = await run_in_threadpool(job_public, record, store)
    return sse(event_id, job.status.value, job.model_dump_json())
