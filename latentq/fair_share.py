"""Fair share between accounts on one model's queue.

Every model's jobs would otherwise wait in one FIFO RQ queue, where one account's backlog of a
thousand jobs puts everyone else's single job behind it. Instead, a submitted job waits in its
account's own list; RQ's queue holds at most ``LATENTQ_FAIR_QUEUE_DEPTH`` jobs (enough for a
worker to fill its rounds), topped up round robin across the accounts with jobs waiting: at
submit (in the submit's own script call) and by each worker as it takes a round. So a light
account's job waits for what RQ's queue already holds plus about one job per other active
account, not for the backlog. Workers and ``rq info`` see plain RQ jobs on plain RQ queues, and a
round may still batch jobs of several accounts.

Redis layout, per RQ queue ``q``: ``latentq:fair:q:<account>`` (the account's waiting job ids, a
list), ``latentq:fair:q:rotation`` (accounts with jobs waiting, in turn order) and
``latentq:fair:q:pending`` (how many jobs wait there in all). The moves are Lua in
``latentq.command_batch`` (``hold``, ``refill``). A depth of 0 turns fair share off.
"""

from __future__ import annotations

from redis import Redis

from latentq.command_batch import CommandBatch
from latentq.keys import PREFIX, rq_queue_key


def fair_prefix(queue: str) -> str:
    """Return the prefix of RQ queue ``queue``'s fair-share keys."""
    return f"{PREFIX}:fair:{queue}:"


def pending_key(queue: str) -> str:
    """Return the key counting the jobs held back from RQ queue ``queue``."""
    return fair_prefix(queue) + "pending"


def waiting(redis: Redis, queue: str) -> int:
    """Return how many jobs wait for RQ queue ``queue``: in it, and held back for their turn."""
    with redis.pipeline(transaction=False) as pipeline:
        pipeline.llen(rq_queue_key(queue))
        pipeline.get(pending_key(queue))
        queued, held = pipeline.execute()
    return int(queued) + int(held or 0)


def refill(redis: Redis, queue: str, depth: int) -> None:
    """Top RQ queue ``queue`` up to ``depth`` jobs from the accounts' waiting lists."""
    if depth > 0:
        CommandBatch().refill(fair_prefix(queue), rq_queue_key(queue), depth).run(redis)


def withdraw(redis: Redis, queue: str, account: str, job_id: str) -> bool:
    """Take ``job_id`` out of ``account``'s waiting list (it was canceled), in one script call;
    return whether it was there."""
    batch = CommandBatch().withdraw(fair_prefix(queue), account, job_id)
    batch.run(redis)
    return batch.withdrawn


def position(redis: Redis, queue: str, account: str, job_id: str) -> int | None:
    """Return how many jobs are ahead of ``job_id``: its place in RQ's queue, or, while it waits in
    its account's list, RQ's queue plus about one job per account ahead of it in turn for each of
    its own jobs ahead of it (round robin)."""
    fair = fair_prefix(queue)
    with redis.pipeline(transaction=False) as pipeline:
        pipeline.lpos(rq_queue_key(queue), job_id)
        pipeline.llen(rq_queue_key(queue))
        pipeline.lpos(fair + account, job_id)
        pipeline.lrange(fair + "rotation", 0, -1)
        in_queue, queued, own_index, rotation = pipeline.execute()
    if in_queue is not None:
        return int(in_queue)
    if own_index is None:
        return None
    turns = [name.decode() for name in rotation]
    turn = turns.index(account) if account in turns else 0
    return int(queued) + int(own_index) * max(1, len(turns)) + turn
