"""A job's Server-Sent Events: the ``Event`` type and a line parser shared by the sync and async jobs."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any

#: Events that end a job's stream: the data of the first three is the final job.
TERMINAL_EVENTS = frozenset({"succeeded", "failed", "canceled", "expired"})


@dataclass(frozen=True)
class Event:
    """One event of a job: ``queued``, ``started``, ``progress``, ``preview``, a terminal one
    (``succeeded``, ``failed``, ``canceled``; ``expired`` once the job is gone) or ``error``."""

    #: The event's stream id: resume after it with ``Last-Event-ID``.
    id: str
    name: str
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        """Whether the job ended with this event (its stream ends too)."""
        return self.name in TERMINAL_EVENTS

    @property
    def step(self) -> int | None:
        """The denoising step a ``progress`` or ``preview`` event reports (1-based), else None."""
        step = self.data.get("step")
        return step if isinstance(step, int) else None

    @property
    def total_steps(self) -> int | None:
        """The job's denoising steps in all, on ``progress`` events."""
        total = self.data.get("total_steps")
        return total if isinstance(total, int) else None

    @property
    def preview_jpeg(self) -> bytes | None:
        """The JPEG bytes of a ``preview`` event (1/8 of the output's side), else None."""
        encoded = self.data.get("jpeg")
        return base64.b64decode(encoded) if self.name == "preview" and isinstance(encoded, str) else None


class EventParser:
    """Turns the lines of an event stream into events, one ``feed`` per line (without its newline)."""

    def __init__(self) -> None:
        self._fields: dict[str, str] = {}
        self._data: list[str] = []

    def feed(self, line: str) -> Event | None:
        """Take one line; return the event it completes (a blank line ends one), else None."""
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment: the server's keep-alive
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        else:
            self._fields[name] = value
        return None

    def _dispatch(self) -> Event | None:
        fields, data = self._fields, "\n".join(self._data)
        self._fields, self._data = {}, []
        if "event" not in fields and not data:
            return None
        parsed = json.loads(data) if data else {}
        return Event(
            fields.get("id", ""), fields.get("event", "message"), parsed if isinstance(parsed, dict) else {}
        )
