"""What waiting for a replica costs a submit's Redis round trip (``LATENTQ_REDIS_WAIT_REPLICAS``).

A durable master and one replica on loopback; the submit's one script call (``CommandBatch``, here
with two small writes) run without and with ``WAIT 1`` on the same connection: one at a time
(microseconds each) and 100 at once (batches per second), alternating twice, after a warm-up.

    .venv/bin/python -m bench.replica_wait [--count 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

from redis.asyncio import Redis as AsyncRedis

from latentq.command_batch import CommandBatch
from latentq_dev.devstack import RedisServer


async def submit(client: AsyncRedis, replicas: int) -> None:
    """One script call with two writes, waiting for ``replicas`` (0: none)."""
    batch = CommandBatch()
    batch.pipeline.hset("bench:record", "status", "queued")
    batch.pipeline.expire("bench:record", 60)
    await batch.run_async(client, replicas, 1000)


async def measure(url: str, count: int) -> None:
    client = AsyncRedis.from_url(url)
    for _ in range(100):  # the replica's first sync
        if (await client.info("replication")).get("connected_slaves", 0) >= 1:
            break
        await asyncio.sleep(0.1)
    # Unreported: the replica rewrites its AOF after its first sync, and answers slowly meanwhile.
    for _ in range(count):
        await submit(client, 1)
    for replicas in (0, 1, 0, 1):
        started = time.perf_counter()
        for _ in range(count):
            await submit(client, replicas)
        sequential_us = (time.perf_counter() - started) / count * 1e6
        started = time.perf_counter()
        for _ in range(count // 100):
            await asyncio.gather(*(submit(client, replicas) for _ in range(100)))
        rate = (count // 100) * 100 / (time.perf_counter() - started)
        print(f"WAIT {replicas}: one at a time {sequential_us:.0f} us each; 100 at once {rate:,.0f}/s")
    await client.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=3000)
    args = parser.parse_args()
    directory = Path(tempfile.mkdtemp(prefix="latentq-replica-wait-"))
    master = RedisServer(directory / "master", durable=True).start()
    replica = RedisServer(
        directory / "replica", durable=True, options=("--replicaof", "127.0.0.1", str(master.port))
    )
    try:
        replica.start()
        asyncio.run(measure(master.url, args.count))
    finally:
        replica.stop()
        master.stop()


if __name__ == "__main__":
    main()
