"""The keyring's cache and its single-flight lookups, on a hand-written fake of the lookup script."""

from __future__ import annotations

import asyncio

import pytest

from api.keyring import Keyring
from latentq.accounts import secret_digest
from latentq.errors import LatentqError

SECRET = "lq_" + "k" * 43


class FakeRedis:
    """Answers the keyring's one script like Redis would for a store holding ``keys``."""

    def __init__(self, keys: dict[str, dict[str, str]]) -> None:
        self.keys = keys
        self.calls = 0

    def register_script(self, _source: str):
        async def lookup(keys: list[str], args: list) -> list:
            self.calls += 1
            await asyncio.sleep(0.01)  # a round trip: every concurrent caller arrives meanwhile
            fields = self.keys.get(keys[0].rsplit(":", 1)[-1], {})
            if not fields:
                return [[], []]
            account = {"id": fields["account"], "name": "a"}
            return [_flat(fields), _flat(account)]

        return lookup


def _flat(fields: dict[str, str]) -> list[bytes]:
    return [part.encode() for pair in fields.items() for part in pair]


def keyring(redis: FakeRedis) -> Keyring:
    return Keyring(redis, accounts=None, bootstrap_keys=())  # type: ignore[arg-type]


def test_concurrent_requests_of_one_key_share_one_lookup_and_then_its_cache():
    redis = FakeRedis({secret_digest(SECRET): {"account": "acct_1", "key_id": "key_1", "scopes": "read"}})
    ring = keyring(redis)

    async def main():
        principals = await asyncio.gather(*(ring.authenticate(SECRET) for _ in range(50)))
        assert {p.key_id for p in principals} == {"key_1"}
        assert redis.calls == 1
        await ring.authenticate(SECRET)
        assert redis.calls == 1  # cached
        ring._cache.clear()
        await ring.authenticate(SECRET)
        assert redis.calls == 2  # the shared lookup is not kept once done

    asyncio.run(main())


def test_concurrent_requests_of_an_unknown_key_are_all_refused_by_one_lookup():
    redis = FakeRedis({})
    ring = keyring(redis)

    async def main():
        answers = await asyncio.gather(
            *(ring.authenticate(SECRET) for _ in range(20)), return_exceptions=True
        )
        assert all(isinstance(a, LatentqError) and a.name == "unauthorized" for a in answers)
        assert redis.calls == 1
        with pytest.raises(LatentqError):
            await ring.authenticate(SECRET)
        assert redis.calls == 2  # refusals are not cached

    asyncio.run(main())


def test_a_request_that_gives_up_does_not_cancel_the_lookup_others_wait_for():
    redis = FakeRedis({secret_digest(SECRET): {"account": "acct_1", "key_id": "key_1", "scopes": "read"}})
    ring = keyring(redis)

    async def main():
        first = asyncio.ensure_future(ring.authenticate(SECRET))
        second = asyncio.ensure_future(ring.authenticate(SECRET))
        await asyncio.sleep(0)
        first.cancel()
        assert (await second).key_id == "key_1"
        assert redis.calls == 1

    asyncio.run(main())
