"""Compatibility alias (remove in 0.4): deliveries are queued under ``latentq.dispatcher.deliver``
(``latentq.contract.DELIVER_FUNCTION``), 0.1's path, so 0.1 dispatchers run them during an
upgrade; RQ resolves it here to ``dispatcher.delivery.deliver``. ``python -m latentq.dispatcher``
still runs the dispatcher (``python -m dispatcher``).

The dispatcher is imported only when RQ asks for ``deliver``, so importing the shared package
never loads the dispatcher's HTTP client.
"""

from __future__ import annotations

import sys
from typing import Any


def __getattr__(name: str) -> Any:
    if name == "deliver":
        from dispatcher.delivery import deliver

        return deliver
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    from dispatcher.__main__ import main

    sys.exit(main())
