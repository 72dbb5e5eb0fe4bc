"""``CommandBatch``: recorded writes run together in one script call if their conditions hold, or
not at all, from either client."""

from __future__ import annotations

import asyncio
import uuid

from redis.asyncio import Redis as AsyncRedis

from latentq.command_batch import CommandBatch


def run(url: str, batch: CommandBatch) -> bool:
    async def go() -> bool:
        client = AsyncRedis.from_url(url)
        try:
            return await batch.run_async(client)
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
    batch = CommandBatch().require_absent(guard, "url")
    batch.pipeline.set(key, "written")

    redis.hset(guard, "url", "https://example.com/")
    assert run(redis_server.url, batch) is False
    assert redis.exists(key) == 0

    redis.hset(guard, "other", "x")
    redis.hdel(guard, "url")
    assert run(redis_server.url, batch) is True
    assert redis.get(key) == b"written"


def test_a_field_condition_holds_only_for_the_listed_values_of_an_existing_field(redis):
    key, record = f"batch-{uuid.uuid4()}", f"record-{uuid.uuid4()}"

    def attempt() -> bool:
        batch = CommandBatch().require_in(record, "status", ("queued", "running"))
        batch.pipeline.incr(key)
        return batch.run(redis)

    assert attempt() is False  # no record: never re-created or written
    redis.hset(record, "status", "queue")  # a prefix of a listed value is not one
    assert attempt() is False
    redis.hset(record, "status", "running")
    assert attempt() is True
    redis.hset(record, "status", "succeeded")
    assert attempt() is False
    assert redis.get(key) == b"1"


def test_a_due_condition_holds_once_the_score_has_passed_on_the_server_clock(redis):
    leases, key = f"leases-{uuid.uuid4()}", f"batch-{uuid.uuid4()}"
    seconds, micros = redis.time()
    now = seconds + micros / 1e6

    def attempt() -> bool:
        batch = CommandBatch().require_due(leases, "job")
        batch.pipeline.incr(key)
        return batch.run(redis)

    assert attempt() is False  # no lease at all
    redis.zadd(leases, {"job": now + 60})
    assert attempt() is False  # still held
    redis.zadd(leases, {"job": now - 1})
    assert attempt() is True
    assert redis.get(key) == b"1"


def test_the_script_is_loaded_again_after_a_script_flush(redis, redis_server):
    key = f"batch-{uuid.uuid4()}"
    redis.script_flush()
    batch = CommandBatch()
    batch.pipeline.set(key, "after flush")
    assert run(redis_server.url, batch) is True
    assert redis.get(key) == b"after flush"
