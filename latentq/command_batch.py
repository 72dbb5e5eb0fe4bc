"""Several Redis writes as one atomic script call, made only if their conditions hold: the one
mechanism by which a job's state changes (``latentq.records``) and a submit is queued.

A MULTI/EXEC of N commands costs the client N + 2 replies to read, and cannot check a value
before writing; a read followed by a write races other clients. ``CommandBatch`` records commands
with the pipeline API (``hset``, ``expire``, ``latentq.rq_writer.queue_job``, ...) and its
conditions, and ``run`` sends them in one ``EVALSHA`` of a script that checks the conditions and
replays the commands: no other client runs in between, a command that fails stops the rest (what
ran stays), and the reply is one integer.

Conditions (all must hold, else nothing runs and ``run`` returns False):

- ``require_in(key, field, values)``: the hash field holds one of ``values`` (a missing key or
  field fails: a late write never re-creates an expired record);
- ``require_absent(key, field)``: the hash field does not exist;
- ``require_containing(key, text)``: the string key exists and contains ``text``;
- ``require_due(key, member)``: the sorted-set member exists with a score (Unix seconds) at or
  before the server's clock (an expired lease);
- ``require_fewer(key, limit)``: the sorted set has fewer than ``limit`` members scored after the
  server's clock (an account's active jobs, each scored by when its record lapses);
- ``require_shorter(key, limit)``: the list is shorter than ``limit`` (a queue's depth).

- ``require_covering(key, field, amount)``: the hash's integer field is at least ``amount`` (an
  account's balance covers a job).

``failed`` then says which condition failed. Besides Redis commands, a batch may carry ``charge``
and ``job_ended``, which the script carries out reading what they need as it stands.

The script names its keys in ARGV, not KEYS: fine on one Redis, which is what latentq (and RQ,
whose transactions span keys in different hash slots) runs on.
"""

from __future__ import annotations

import hashlib
from typing import Any

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.client import Pipeline
from redis.exceptions import NoScriptError

from latentq.keys import PREFIX

_REPLAY = """
local conditions = tonumber(ARGV[1])
local i = 2
local rate_used, withdrawn = 0, 0
-- The reply: 1, or minus the number of the condition that failed; then how the rate stands.
local function refuse(c) return {-c, rate_used, 0} end
for c = 1, conditions do
  local kind, key, a, b = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  if kind == 'in' then
    local value = redis.call('hget', key, a)
    if not value or not string.find(' ' .. b .. ' ', ' ' .. value .. ' ', 1, true) then return refuse(c) end
  elseif kind == 'has' then
    local value = redis.call('get', key)
    if not value or not string.find(value, a, 1, true) then return refuse(c) end
  elseif kind == 'absent' then
    if redis.call('hexists', key, a) == 1 then return refuse(c) end
  elseif kind == 'due' then
    local score = redis.call('zscore', key, a)
    local now = redis.call('time')
    if not score or tonumber(score) > tonumber(now[1]) + tonumber(now[2]) / 1e6 then return refuse(c) end
  elseif kind == 'fewer' then
    local now = redis.call('time')
    if redis.call('zcount', key, now[1], '+inf') >= tonumber(a) then return refuse(c) end
  elseif kind == 'shorter' then
    local held = b ~= '' and tonumber(redis.call('get', b) or '0') or 0
    if redis.call('llen', key) + held >= tonumber(a) then return refuse(c) end
  elseif kind == 'covers' then
    if tonumber(redis.call('hget', key, a) or '0') < tonumber(b) then return refuse(c) end
  elseif kind == 'rate' then
    -- GCRA (api.rate_limit): counts this request whatever the other conditions say.
    local t = redis.call('time')
    local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
    local period, interval = tonumber(a), tonumber(b)
    local tat = math.max(tonumber(redis.call('get', key) or '0'), now)
    local after = tat + interval
    if after - now > period then return {-c, tat - now, after - now - period} end
    redis.call('set', key, string.format('%d', after), 'PX', math.ceil((after - now) / 1000))
    rate_used = after - now
  end
end
local function ledger(prefix, owner, milli, reason, job_id)
  local balance = redis.call('hincrby', prefix .. 'account:' .. owner, 'balance', milli)
  redis.call('xadd', prefix .. 'account:' .. owner .. ':ledger', 'MAXLEN', '~', '100000', '*',
    'amount', string.format('%.3f', milli / 1000), 'balance', string.format('%.3f', balance / 1000),
    'reason', reason, 'job', job_id)
end
-- Fair share (latentq.fair_share): RQ's queue holds at most `depth` jobs, taken round robin from
-- the lists of the accounts with jobs waiting (`fair` .. account; `fair` .. 'rotation' lists the
-- accounts, `fair` .. 'pending' counts their jobs).
local function refill(fair, queue, depth)
  local rotation = fair .. 'rotation'
  while redis.call('llen', queue) < depth do
    local account = redis.call('lmove', rotation, rotation, 'LEFT', 'RIGHT')
    if not account then break end
    local job_id = redis.call('lpop', fair .. account)
    if job_id then
      redis.call('rpush', queue, job_id)
      redis.call('decr', fair .. 'pending')
    end
    if redis.call('llen', fair .. account) == 0 then redis.call('lrem', rotation, 0, account) end
  end
end
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  if ARGV[i + 1] == 'LQ_HOLD' then
    local fair, account = ARGV[i + 2], ARGV[i + 4]
    redis.call('rpush', fair .. account, ARGV[i + 5])
    redis.call('incr', fair .. 'pending')
    if not redis.call('lpos', fair .. 'rotation', account) then
      redis.call('rpush', fair .. 'rotation', account)
    end
    refill(fair, ARGV[i + 3], tonumber(ARGV[i + 6]))
  elseif ARGV[i + 1] == 'LQ_REFILL' then
    refill(ARGV[i + 2], ARGV[i + 3], tonumber(ARGV[i + 4]))
  elseif ARGV[i + 1] == 'LQ_WITHDRAW' then
    local fair = ARGV[i + 2]
    withdrawn = redis.call('lrem', fair .. ARGV[i + 3], 1, ARGV[i + 4])
    if withdrawn == 1 then redis.call('decr', fair .. 'pending') end
  elseif ARGV[i + 1] == 'LQ_CHARGE' then
    ledger(ARGV[i + 2], ARGV[i + 3], -tonumber(ARGV[i + 4]), 'charge', ARGV[i + 5])
  elseif ARGV[i + 1] == 'LQ_ENDED' then
    -- A job ended: it leaves its account's active jobs, and counts in its model's drain rate. One
    -- that did not succeed gives its credits back (canceled while sampling: the steps not run).
    local record, job_id, prefix = ARGV[i + 2], ARGV[i + 3], ARGV[i + 4]
    local owner, model, status, cost, step, total = unpack(
      redis.call('hmget', record, 'owner', 'model', 'status', 'cost', 'step', 'total_steps'))
    if owner and owner ~= '' then redis.call('zrem', prefix .. 'account:' .. owner .. ':active', job_id) end
    cost = tonumber(cost or '0')
    if cost > 0 and owner and owner ~= '' and status ~= 'succeeded' then
      local refund = cost
      total = tonumber(total or '0')
      if status == 'canceled' and total > 0 then
        refund = math.floor(cost * (1 - tonumber(step or '0') / total) + 0.5)
      end
      if refund > 0 then ledger(prefix, owner, refund, 'refund', job_id) end
    end
    if model then
      local bucket = prefix .. 'drained:' .. model .. ':' .. math.floor(tonumber(redis.call('time')[1]) / 10)
      redis.call('incr', bucket)
      redis.call('expire', bucket, 60)
    end
  else
    redis.call(unpack(ARGV, i + 1, i + count))
  end
  i = i + count + 1
end
return {1, rate_used, withdrawn}
"""
#: The pseudo-command ``job_ended`` records (the script carries it out).
ENDED = "LQ_ENDED"
#: The pseudo-command ``charge`` records.
CHARGE = "LQ_CHARGE"
#: The pseudo-commands of fair share (``hold``, ``refill``, ``withdraw``).
HOLD, REFILL, WITHDRAW = "LQ_HOLD", "LQ_REFILL", "LQ_WITHDRAW"
_REPLAY_SHA = hashlib.sha1(_REPLAY.encode()).hexdigest()

#: Records commands only: a client that never connects.
_RECORDER = Redis()


class CommandBatch:
    """Redis commands recorded on ``pipeline`` (a sync pipeline that is never executed), run together
    by ``run`` (sync client) or ``run_async`` (asyncio client) if the conditions hold."""

    def __init__(self) -> None:
        self.pipeline: Pipeline = _RECORDER.pipeline(transaction=False)
        self._conditions: list[str] = []
        #: After a run that did not run: which condition failed (1-based, in the order added).
        self.failed: int | None = None
        #: After a run with ``require_rate``: the rate used up (``Verdict``), and the wait before the
        #: next request is admitted (refused), microseconds.
        self.rate_used_us = self.rate_wait_us = 0
        #: After a run with ``withdraw``: whether the job was waiting.
        self.withdrawn = False
        #: After a ``run_async`` that waited for replicas: whether enough acknowledged its writes.
        self.replicated = True

    def require_in(self, key: str, field: str, values: list[str] | tuple[str, ...]) -> CommandBatch:
        """Run only if hash ``key``'s ``field`` holds one of ``values`` (none contains a space)."""
        self._conditions += ["in", key, field, " ".join(values)]
        return self

    def require_containing(self, key: str, text: str) -> CommandBatch:
        """Run only if string ``key`` exists and contains ``text``."""
        self._conditions += ["has", key, text, ""]
        return self

    def require_absent(self, key: str, field: str) -> CommandBatch:
        """Run only if hash ``key`` has no ``field``."""
        self._conditions += ["absent", key, field, ""]
        return self

    def require_due(self, key: str, member: str) -> CommandBatch:
        """Run only if ``member`` of sorted set ``key`` has a score at or before the server's time."""
        self._conditions += ["due", key, member, ""]
        return self

    def require_fewer(self, key: str, limit: int) -> CommandBatch:
        """Run only if sorted set ``key`` has fewer than ``limit`` members scored (Unix seconds: when
        they lapse) after the server's time."""
        self._conditions += ["fewer", key, str(limit), ""]
        return self

    def require_shorter(self, key: str, limit: int, plus: str = "") -> CommandBatch:
        """Run only if list ``key`` is shorter than ``limit`` (counting the integer at key ``plus``
        too, when given: the jobs a queue holds back for fair share)."""
        self._conditions += ["shorter", key, str(limit), plus]
        return self

    def hold(self, fair: str, queue_key: str, account: str, job_id: str, depth: int) -> CommandBatch:
        """Record, among the commands, adding ``job_id`` to ``account``'s waiting jobs of a queue
        (``latentq.fair_share``), then topping the queue up to ``depth``."""
        self.pipeline.execute_command(HOLD, fair, queue_key, account, job_id, depth)
        return self

    def withdraw(self, fair: str, account: str, job_id: str) -> CommandBatch:
        """Record, among the commands, taking ``job_id`` out of ``account``'s waiting jobs of a
        queue; after the run, ``withdrawn`` says whether it was there."""
        self.pipeline.execute_command(WITHDRAW, fair, account, job_id)
        return self

    def refill(self, fair: str, queue_key: str, depth: int) -> CommandBatch:
        """Record, among the commands, topping RQ queue ``queue_key`` up to ``depth`` jobs, round
        robin across the accounts with jobs waiting."""
        self.pipeline.execute_command(REFILL, fair, queue_key, depth)
        return self

    def job_ended(self, record_key: str, job_id: str) -> CommandBatch:
        """Record, among the commands, that job ``job_id`` (record ``record_key``) ended: it leaves
        its account's active jobs (``latentq.keys.account_active_key``), counts in its model's
        drain rate (``drained_key``) and, unless it succeeded, refunds its ``cost`` (canceled: the
        share of steps it did not run) with a ledger entry; all read from the record as it is
        when the commands run."""
        self.pipeline.execute_command(ENDED, record_key, job_id, f"{PREFIX}:")
        return self

    def require_covering(self, key: str, field: str, amount: int) -> CommandBatch:
        """Run only if hash ``key``'s integer ``field`` (missing: 0) is at least ``amount``."""
        self._conditions += ["covers", key, field, str(amount)]
        return self

    def charge(self, account_id: str, milli: int, job_id: str) -> CommandBatch:
        """Record, among the commands, taking ``milli`` thousandths of a credit from the account's
        balance for ``job_id``, with its ledger entry (the balance after it, as the script finds it)."""
        self.pipeline.execute_command(CHARGE, f"{PREFIX}:", account_id, milli, job_id)
        return self

    def require_rate(self, key: str, period_us: int, interval_us: int) -> CommandBatch:
        """Run only if a request more is within the GCRA rate whose state is at ``key``
        (``api.rate_limit``); the request is counted whether the batch runs or not. After the
        run, ``rate_used_us`` and ``rate_wait_us`` say how the rate stands."""
        self._conditions += ["rate", key, str(period_us), str(interval_us)]
        return self

    @property
    def conditions(self) -> int:
        """How many conditions the batch has (``failed`` is one of 1..conditions)."""
        return len(self._conditions) // 4

    def _arguments(self) -> list[Any]:
        flat: list[Any] = [len(self._conditions) // 4, *self._conditions]
        for args, _options in self.pipeline.command_stack:
            flat.append(len(args))
            flat.extend(args)
        return flat

    def run(self, redis: Redis) -> bool:
        """Check the conditions and run the recorded commands atomically in one round trip; return
        whether they ran."""
        args = self._arguments()
        try:
            ran: Any = redis.evalsha(_REPLAY_SHA, 0, *args)
        except NoScriptError:  # first use on this server (or after SCRIPT FLUSH)
            redis.script_load(_REPLAY)
            ran = redis.evalsha(_REPLAY_SHA, 0, *args)
        return self._outcome(ran)

    def _outcome(self, reply: list[int]) -> bool:
        ran, self.rate_used_us, third = (int(value) for value in reply)
        # The reply's last place: the rate's wait when it refused, or whether ``withdraw`` found
        # its job (no batch has both).
        self.rate_wait_us, self.withdrawn = third, third == 1
        self.failed = None if ran == 1 else -ran
        return ran == 1

    async def run_async(self, redis: AsyncRedis, replicas: int = 0, wait_ms: int = 0) -> bool:
        """``run`` on the asyncio client (no thread). With ``replicas``, the same connection then
        waits up to ``wait_ms`` milliseconds (Redis ``WAIT``) until that many replicas hold what
        the batch wrote, and ``replicated`` says whether they did."""
        args = self._arguments()
        ran: Any
        if replicas:
            return await self._run_replicated(redis, args, replicas, wait_ms)
        try:
            ran = await redis.evalsha(_REPLAY_SHA, 0, *args)
        except NoScriptError:
            await redis.script_load(_REPLAY)
            ran = await redis.evalsha(_REPLAY_SHA, 0, *args)
        return self._outcome(ran)

    async def _run_replicated(self, redis: AsyncRedis, args: list[Any], replicas: int, wait_ms: int) -> bool:
        # WAIT counts the writes of its own connection: one pipeline sends both on one connection.
        for _ in range(2):
            pipeline = redis.pipeline(transaction=False)
            pipeline.evalsha(_REPLAY_SHA, 0, *args)
            pipeline.wait(replicas, wait_ms)
            ran, acknowledged = await pipeline.execute(raise_on_error=False)
            if not isinstance(ran, NoScriptError):
                break
            await redis.script_load(_REPLAY)  # first use on this server (a promoted replica, say)
        if isinstance(ran, Exception):
            raise ran
        if isinstance(acknowledged, Exception):
            raise acknowledged
        self.replicated = int(acknowledged) >= replicas
        return self._outcome(ran)
