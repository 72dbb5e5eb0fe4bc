"""Slots for long waits: every event stream, ``Prefer: wait`` and synchronous Stability request
holds one while it waits, so one account cannot hold every wait an API process can make (nor,
through them, Redis connections: waits block on a pool of their own, ``Services.wait_redis``).

Counted per API process, on its event loop (no lock: one thread takes and gives them).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from latentq.errors import LatentqError


class StreamSlots:
    """At most ``total`` slots in all and ``per_account`` for any one account (owner)."""

    def __init__(self, total: int, per_account: int) -> None:
        self.total, self.per_account = total, per_account
        self.held: Counter[str] = Counter()

    def take(self, owner: str) -> None:
        """Take a slot for ``owner``; raise ``too_many_streams`` (429) if it holds its share, or
        ``service_busy`` (503) if this process holds all it may."""
        if self.held[owner] >= self.per_account:
            raise LatentqError("too_many_streams")
        if self.held.total() >= self.total:
            raise LatentqError("service_busy")
        self.held[owner] += 1

    def give_back(self, owner: str) -> None:
        """Give back a slot ``owner`` took."""
        self.held[owner] -= 1
        if self.held[owner] <= 0:
            del self.held[owner]

    @contextmanager
    def holding(self, owner: str) -> Iterator[None]:
        """Hold a slot for ``owner`` for the ``with`` block (``take``'s errors if there is none)."""
        self.take(owner)
        try:
            yield
        finally:
            self.give_back(owner)
