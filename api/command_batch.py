"""Several Redis writes as one atomic script call: one command, one reply.

A MULTI/EXEC of N commands costs the client N + 2 replies to read, and redis-py's asyncio client
spends time parsing each (docs/BENCHMARKS.md). ``CommandBatch`` records commands with the pipeline API
(``hset``, ``expire``, ``latentq.rq_writer.queue_job``, ...) and ``run`` sends them in one ``EVALSHA``
of a script that replays them: atomic as MULTI/EXEC is (no other client runs in between; a
command that fails stops the rest, and what ran stays), optionally only while a hash field is
absent (a check and the writes with no other client between them).

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

_REPLAY = """
local i = 1
if #KEYS == 1 then
  if redis.call('hexists', KEYS[1], ARGV[1]) == 1 then return 0 end
  i = 2
end
while i <= #ARGV do
  local count = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + count))
  i = i + count + 1
end
return 1
"""
_REPLAY_SHA = hashlib.sha1(_REPLAY.encode()).hexdigest()

#: Records commands only: a client that never connects.
_RECORDER = Redis()


class CommandBatch:
    """Redis commands recorded on ``pipeline`` (a sync pipeline that is never executed) and run
    together by ``run``."""

    def __init__(self) -> None:
        self.pipeline: Pipeline = _RECORDER.pipeline(transaction=False)

    def _arguments(self) -> list[Any]:
        flat: list[Any] = []
        for args, _options in self.pipeline.command_stack:
            flat.append(len(args))
            flat.extend(args)
        return flat

    async def run(self, redis: AsyncRedis, unless_field: tuple[str, str] | None = None) -> bool:
        """Run the recorded commands atomically in one round trip; return True. With
        ``unless_field`` (hash key, field), run nothing and return False if that field exists."""
        keys = [unless_field[0]] if unless_field else []
        args = [unless_field[1], *self._arguments()] if unless_field else self._arguments()
        ran: Any
        try:
            ran = await redis.evalsha(_REPLAY_SHA, len(keys), *keys, *args)
        except NoScriptError:  # first use on this server (or after SCRIPT FLUSH)
            await redis.script_load(_REPLAY)
            ran = await redis.evalsha(_REPLAY_SHA, len(keys), *keys, *args)
        return bool(ran)
