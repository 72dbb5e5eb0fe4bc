"""``latentq.rq_writer.queue_job`` writes what RQ's own ``enqueue_call`` writes, from either client."""

from __future__ import annotations

import asyncio
import uuid

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from latentq.rq_writer import queue_job

#: Fields whose values are times of day: they differ between any two enqueues.
_TIMES = {b"created_at", b"enqueued_at"}


def _options(job_id: str) -> dict:
    return dict(job_id=job_id, timeout=90, result_ttl=600, failure_ttl=700, description=f"job {job_id}")


def _compare(redis: Redis, queue: str, ours: str, theirs: str) -> None:
    mine, rqs = redis.hgetall(f"rq:job:{ours}"), redis.hgetall(f"rq:job:{theirs}")
    assert set(mine) == set(rqs)
    for field in set(mine) - _TIMES:
        expected = rqs[field].replace(theirs.encode(), ours.encode())  # the description names the id
        assert mine[field] == expected, field
    assert redis.lrange(f"rq:queue:{queue}", 0, -1) == [theirs.encode(), ours.encode()]
    assert f"rq:queue:{queue}".encode() in redis.smembers("rq:queues")
    assert redis.ttl(f"rq:job:{ours}") == redis.ttl(f"rq:job:{theirs}") == -1


def test_a_job_queued_on_a_sync_pipeline_is_the_one_rq_would_write(redis):
    queue = f"rqjobs-{uuid.uuid4().hex[:8]}"
    theirs, ours = str(uuid.uuid4()), str(uuid.uuid4())
    Queue(queue, connection=redis, serializer=JSONSerializer).enqueue_call(
        "json.dumps", kwargs={"obj": [1, 2]}, **_options(theirs)
    )
    with redis.pipeline() as pipeline:
        assert queue_job(pipeline, queue, "json.dumps", {"obj": [1, 2]}, **_options(ours)) == ours
        pipeline.execute()
    _compare(redis, queue, ours, theirs)


def test_a_job_queued_on_an_asyncio_pipeline_runs_on_an_rq_worker(redis, redis_server):
    queue = f"rqjobs-{uuid.uuid4().hex[:8]}"
    theirs, ours = str(uuid.uuid4()), str(uuid.uuid4())
    Queue(queue, connection=redis, serializer=JSONSerializer).enqueue_call(
        "json.dumps", kwargs={"obj": [1, 2]}, **_options(theirs)
    )

    async def submit() -> None:
        client = AsyncRedis.from_url(redis_server.url)
        async with client.pipeline(transaction=True) as pipeline:
            queue_job(pipeline, queue, "json.dumps", {"obj": [1, 2]}, **_options(ours))
            await pipeline.execute()
        await client.aclose()

    asyncio.run(submit())
    _compare(redis, queue, ours, theirs)

    rq_queue = Queue(queue, connection=redis, serializer=JSONSerializer)
    assert rq_queue.count == 2 and rq_queue.get_job_position(ours) == 1
    SimpleWorker([rq_queue], connection=redis, serializer=JSONSerializer).work(burst=True)
    job = Job.fetch(ours, connection=redis, serializer=JSONSerializer)
    assert job.get_status() == "finished" and job.return_value() == "[1, 2]"
