"""Leases on claimed jobs: from the moment a worker takes a job off its queue until the job ends,
the job has a lease in ``LEASES`` that the worker's heartbeat renews. A job whose lease expires
(its worker died, froze or lost Redis for longer than the lease) is recovered by a reaper
(``latentq.reaper``): put back at the front of its queue, or failed ``worker_lost``.

A worker takes the head job RQ hands it (``take``; RQ's intermediate queue holds it until then)
and claims its batch-mates straight from the queue list (``claim``: the LREM and the lease in one
script, so no job is ever in no list). Every time is the Redis server's, so workers on machines
with different clocks agree.
"""

from __future__ import annotations

import threading
from typing import Any

from redis import Redis
from rq import Queue, Worker

from latentq.keys import LEASE_HOLDERS, LEASES, job_key, worker_alive_key

# KEYS: queue, leases, holders; ARGV: holder, lease seconds, job ids. Returns 1/0 per id.
_CLAIM = """
local t = redis.call('time')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[2])
local claimed = {}
for i = 3, #ARGV do
  if redis.call('lrem', KEYS[1], 1, ARGV[i]) == 1 then
    redis.call('zadd', KEYS[2], expiry, ARGV[i])
    redis.call('hset', KEYS[3], ARGV[i], ARGV[1])
    claimed[#claimed + 1] = 1
  else
    claimed[#claimed + 1] = 0
  end
end
return claimed
"""
# KEYS: leases, holders; ARGV: holder, lease seconds, mode, job ids. Modes: take (whoever held
# it), renew (only the holder's), adopt (only a job without a lease; no holder).
_HOLD = """
local t = redis.call('time')
local expiry = tonumber(t[1]) + tonumber(t[2]) / 1e6 + tonumber(ARGV[2])
for i = 4, #ARGV do
  local id = ARGV[i]
  if ARGV[3] == 'take' then
    redis.call('zadd', KEYS[1], expiry, id)
    redis.call('hset', KEYS[2], id, ARGV[1])
  elseif ARGV[3] == 'renew' then
    if redis.call('hget', KEYS[2], id) == ARGV[1] then redis.call('zadd', KEYS[1], 'XX', expiry, id) end
  elseif ARGV[3] == 'adopt' then
    redis.call('zadd', KEYS[1], 'NX', expiry, id)
  end
end
return 1
"""
# KEYS: leases, holders; ARGV: holder, 1 to release only leases of ended jobs (else 0), then
# pairs of job id and record key: drop the holder's leases.
_RELEASE = """
local live = {queued = true, running = true}
for i = 3, #ARGV, 2 do
  local id, record = ARGV[i], ARGV[i + 1]
  if redis.call('hget', KEYS[2], id) == ARGV[1]
      and (ARGV[2] == '0' or not live[redis.call('hget', record, 'status') or '']) then
    redis.call('zrem', KEYS[1], id)
    redis.call('hdel', KEYS[2], id)
  end
end
return 1
"""


class Leases:
    """The leases one holder (a worker, by name) takes, renews and releases, each ``lease_s`` seconds."""

    def __init__(self, redis: Redis, holder: str, lease_s: float) -> None:
        self.redis, self.holder, self.lease_s = redis, holder, lease_s
        #: The job ids this holder took or claimed and has not released (kept in memory).
        self.held: set[str] = set()
        self._lock = threading.Lock()
        self._claim = redis.register_script(_CLAIM)
        self._hold = redis.register_script(_HOLD)
        self._release = redis.register_script(_RELEASE)

    def claim(self, queue_key: str, job_ids: list[str]) -> list[bool]:
        """Take each of ``job_ids`` off the RQ queue list ``queue_key`` with a lease, atomically;
        return which were still there (the others another worker took first)."""
        if not job_ids:
            return []
        claimed: Any = self._claim(
            keys=[queue_key, LEASES, LEASE_HOLDERS], args=[self.holder, self.lease_s, *job_ids]
        )
        flags = [bool(flag) for flag in claimed]
        with self._lock:
            self.held.update(job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag)
        return flags

    def take(self, job_ids: list[str]) -> None:
        """Hold leases on ``job_ids`` (jobs RQ handed this worker), whoever held them before."""
        self._run_hold("take", job_ids)
        with self._lock:
            self.held.update(job_ids)

    def renew(self, job_ids: list[str]) -> None:
        """Extend this holder's leases on ``job_ids`` (a lease another holder took is left alone)."""
        self._run_hold("renew", job_ids)

    def adopt(self, job_ids: list[str]) -> None:
        """Give each of ``job_ids`` that has no lease one with no holder: a job found taken off its
        queue but held by no one (its worker died right after taking it) is then recovered once
        the lease expires, unless a worker takes it first."""
        self._run_hold("adopt", job_ids)

    def release(self, job_ids: list[str], only_ended: bool = True) -> None:
        """Drop this holder's leases on ``job_ids``: by default only those whose job has ended (a job
        whose outcome could not be recorded keeps its lease, so the reaper runs it again once it
        expires); with ``only_ended`` False, all (jobs this worker put back in their queue)."""
        try:
            if job_ids:
                pairs = [item for job_id in job_ids for item in (job_id, job_key(job_id))]
                self._release(keys=[LEASES, LEASE_HOLDERS], args=[self.holder, int(only_ended), *pairs])
        finally:  # no longer renewed either way: a lease the script could not drop runs out
            with self._lock:
                self.held.difference_update(job_ids)

    def expire_now(self) -> list[str]:
        """End every lease this holder holds at once (it is giving its jobs up); return their ids."""
        with self._lock:
            held = sorted(self.held)
        if held:
            self.redis.zadd(LEASES, dict.fromkeys(held, 0), xx=True)
        return held

    def expired(self, limit: int = 100) -> list[str]:
        """Return up to ``limit`` job ids whose lease expired, oldest first."""
        seconds, micros = self.redis.time()
        due: Any = self.redis.zrangebyscore(LEASES, "-inf", seconds + micros / 1e6, start=0, num=limit)
        return [job_id.decode() for job_id in due]

    def _run_hold(self, mode: str, job_ids: list[str]) -> None:
        if job_ids:
            self._hold(keys=[LEASES, LEASE_HOLDERS], args=[self.holder, self.lease_s, mode, *job_ids])


def live_workers(redis: Redis, queue_name: str) -> int:
    """Count the workers listening on ``queue_name`` whose heartbeat is fresh (a worker killed
    ``LATENTQ_WORKER_LOST_S`` ago no longer counts, though RQ still lists it for minutes)."""
    prefix = Worker.redis_worker_namespace_prefix
    keys = Worker.all_keys(connection=redis, queue=Queue(queue_name, connection=redis))
    names = [key.removeprefix(prefix) for key in keys]
    return int(redis.exists(*[worker_alive_key(name) for name in names])) if names else 0
