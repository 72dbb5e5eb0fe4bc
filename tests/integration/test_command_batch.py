"""``CommandBatch``: recorded writes run together in one script call, or not at all."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis as AsyncRedis

from api.command_batch import CommandBatch


def run(url: str, batch: CommandBatch, unless_field: tuple[str, str] | None = None) -> bool:
    async def go() -> bool:
        client = AsyncRedis.from_url(url)
        try:
            return await batch.run(client, unless_field)
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_recorded_commands_run_in_order_with_their_arguments(redis, redis_server):
    key = f"batch-{uuid.uuid4()}"
    batch = CommandBatch()
    batch.pipeline.hset(key, mapping={"text": "a b  c", "binary": b"\x00\xff", "number": 7, "ratio": 0.25})
    batch.pipeline.hset(key, "text", "replaced")  # a later command sees the earlier one's effect
    batch.pipeline.rpush(f"{key}:list", "one", "two")
    batch.pipeline.expire(key, 100)
    batch.pipeline.xadd(f"{key}:stream", {"event": "queued"}, maxlen=10, approximate=True)

    assert run(redis_server.url, batch) is True
    assert redis.hgetall(key) == {
        b"text": b"replaced",
        b"binary": b"\x00\xff",
        b"number": b"7",
        b"ratio": b"0.25",
    }
    assert redis.lrange(f"{key}:list", 0, -1) == [b"one", b"two"]
    assert 95 <= redis.ttl(key) <= 100
    assert redis.xlen(f"{key}:stream") == 1


def test_nothing_runs_while_the_guard_field_exists(redis, redis_server):
    key, guard = f"batch-{uuid.uuid4()}", f"guard-{uuid.uuid4()}"
    batch = CommandBatch()
    batch.pipeline.set(key, "written")

    redis.hset(guard, "url", "https://example.com/")
    assert run(redis_server.url, batch, (guard, "url")) is False
    assert redis.exists(key) == 0

    redis.hset(guard, "other", "x")
    redis.hdel(guard, "url")
    assert run(redis_server.url, batch, (guard, "url")) is True
    assert redis.get(key) == b"written"


def test_the_script_is_loaded_again_after_a_script_flush(redis, redis_server):
    key = f"batch-{uuid.uuid4()}"
    redis.script_flush()
    batch = CommandBatch()
    batch.pipeline.set(key, "after flush")
    assert run(redis_server.url, batch) is True
    assert redis.get(key) == b"after flush"
