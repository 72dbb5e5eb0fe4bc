"""Deprecated alias, kept for one release (remove in 0.3): deliveries queued before 0.2 name
``latentq.dispatcher.deliver``; RQ resolves that path here. New ones name
``dispatcher.delivery.deliver`` (``latentq.contract.DELIVER_FUNCTION``).

The dispatcher is imported only when RQ asks for ``deliver``, so importing the shared package
never loads the dispatcher's HTTP client.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    if name == "deliver":
        from dispatcher.delivery import deliver

        return deliver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
