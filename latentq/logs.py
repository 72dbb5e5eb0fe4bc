"""Logging of every latentq process: one JSON object a line (or human-readable text), each line
carrying the job, account and request it concerns.

``configure_logging`` is called once at a process's start (the API's app factory, ``python -m
worker``, ``python -m dispatcher``). A JSON line holds ``timestamp`` (ISO 8601 UTC, milliseconds),
``level``, ``process`` (``api``, ``worker``, ``dispatcher``), ``logger``, ``event`` (the message),
then the fields of the context it was logged in (``job_id``, ``account``, ``request_id``), the
fields the call passed as ``extra=`` (a round's ``batch_size`` and ``idle_ms``, say), and
``exception`` (the traceback, one string) when there is one.

Context fields live in a context variable: code that handles one job or one request sets them
once (``log_context``), and every line logged beneath it, in its thread or task, carries them.
A new thread starts without them; an asyncio task, or a thread of Starlette's pool, takes a copy.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType, TracebackType
from typing import Any, Literal

from latentq.contract import JobSpec
from latentq.settings import CommonSettings

#: The kinds of process that log.
ProcessKind = Literal["api", "worker", "dispatcher"]

#: The context fields, in the order lines show them.
CONTEXT_FIELDS = ("job_id", "account", "request_id")

_fields: ContextVar[Mapping[str, Any]] = ContextVar("latentq_log_fields", default=MappingProxyType({}))

# What every LogRecord has: anything else on one came from ``extra=`` and is a field of the line
# (but uvicorn's ``color_message``, its message again with terminal colour codes).
_STANDARD_ATTRIBUTES = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message", "asctime", "taskName", "color_message",
}  # fmt: skip

# Line separators JSON leaves unescaped that ``str.splitlines`` (and some log shippers) split on.
_SEPARATORS = {"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"}

# uvicorn configures these before it calls the app factory, each with a handler of its own.
_UVICORN_LOGGERS = ("uvicorn", "uvicorn.error", "uvicorn.access")


def log_fields() -> Mapping[str, Any]:
    """Return the context fields of the calling thread or task (read-only)."""
    return _fields.get()


def add_log_fields(**fields: Any) -> None:
    """Add ``fields`` to the current context (None values are left out) until the enclosing
    ``log_context`` ends: for what becomes known part-way (the account, once the key is checked)."""
    _fields.set({**_fields.get(), **{name: value for name, value in fields.items() if value is not None}})


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Carry ``fields`` (None values left out) on every line logged in the ``with`` block, in this
    thread or task; the fields before it are back after it, as are those ``add_log_fields`` changed."""
    token = _fields.set(
        {**_fields.get(), **{name: value for name, value in fields.items() if value is not None}}
    )
    try:
        yield
    finally:
        _fields.reset(token)


def job_log_fields(spec: JobSpec) -> dict[str, str | None]:
    """The context fields of the lines about ``spec``'s job."""
    return {"job_id": spec.job_id, "account": spec.account or None, "request_id": spec.request_id}


def record_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of ``record`` beyond its message: the context's, then those of ``extra=``."""
    fields = dict(_fields.get())  # handlers format in the thread that logs: its context
    fields.update(
        (name, value) for name, value in record.__dict__.items() if name not in _STANDARD_ATTRIBUTES
    )
    return fields


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object on one line (module docstring)."""

    def __init__(self, process: str) -> None:
        super().__init__()
        self.process = process

    def format(self, record: logging.LogRecord) -> str:
        moment = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, Any] = {
            "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "process": self.process,
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = record_fields(record)
        if record.name == "uvicorn.access":
            fields.update(access_fields(record))
        line.update((name, value) for name, value in fields.items() if name not in line)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.stack_info:
            line["exception"] = self.formatStack(record.stack_info)
        text = json.dumps(line, ensure_ascii=False, default=str)
        for separator, escaped in _SEPARATORS.items():
            if separator in text:
                text = text.replace(separator, escaped)
        return text


class TextFormatter(logging.Formatter):
    """Formats a record for people: ``time level logger: message [field=value ...]``, with its
    traceback below it (``make run``)."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        fields = record_fields(record)
        suffix = " ".join(f"{name}={value}" for name, value in fields.items())
        return super().formatMessage(record) + (f" [{suffix}]" if suffix else "")


def access_fields(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of a uvicorn access line: client, method, path, http_version and status."""
    args = record.args
    if not isinstance(args, tuple) or len(args) != 5:
        return {}
    client, method, path, http_version, status = args
    return {"client": client, "method": method, "path": path, "http_version": http_version, "status": status}


def configure_logging(process: ProcessKind, settings: CommonSettings) -> None:
    """Make every line this process logs one line of ``settings.log_format`` at
    ``settings.log_level`` and above, on stderr, with the process kind and context fields.

    Replaces the root logger's handlers; routes uvicorn's loggers (configured before the API's app
    factory runs) through it, keeping their levels and an access log turned off; gives the
    handlers libraries keep for themselves (transformers', diffusers') its formatter, keeping their
    filters; turns ``warnings`` into log records and logs uncaught exceptions. Calling it again
    replaces what the last call set."""
    formatter: logging.Formatter = (
        JsonFormatter(process) if settings.log_format == "json" else TextFormatter()
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter)
    handler.setLevel(settings.log_level)  # also for loggers set lower (uvicorn's, RQ's: INFO)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level)
    for name in _UVICORN_LOGGERS:
        logger = logging.getLogger(name)
        if logger.handlers:  # none: not run by uvicorn, or its access log is off (left off)
            logger.handlers.clear()
            logger.propagate = True
    for logger in _loggers_with_handlers():
        for own in logger.handlers:
            if isinstance(own, logging.StreamHandler) and own.stream in (sys.stderr, sys.stdout):
                own.setFormatter(formatter)
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _loggers_with_handlers() -> list[logging.Logger]:
    """The loggers other than the root that have handlers of their own."""
    loggers = logging.Logger.manager.loggerDict.values()
    return [logger for logger in loggers if isinstance(logger, logging.Logger) and logger.handlers]


def _log_uncaught(kind: type[BaseException], error: BaseException, traceback: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, traceback)
        return
    logging.getLogger("latentq").critical("uncaught exception", exc_info=(kind, error, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_value is None or issubclass(args.exc_type, SystemExit):
        return
    name = args.thread.name if args.thread is not None else "?"
    logging.getLogger("latentq").critical(
        "uncaught exception in thread %s", name, exc_info=(args.exc_type, args.exc_value, args.exc_traceback)
    )
