"""The log line formats (``latentq.logs``): JSON a line with the context's fields, or text for people."""

from __future__ import annotations

import io
import json
import logging
import sys
import threading
from collections.abc import Iterator

import pytest

from latentq.contract import JobSpec, WeightedPrompt
from latentq.logs import (
    JsonFormatter,
    TextFormatter,
    add_log_fields,
    configure_logging,
    job_log_fields,
    log_context,
    log_fields,
)
from latentq.periodic import Periodic
from latentq.settings import CommonSettings


def record(message: str, *args: object, level: int = logging.INFO, **extra: object) -> logging.LogRecord:
    """A record as ``logging.getLogger("latentq.test").log(level, message, *args, extra=extra)`` makes."""
    made = logging.getLogger("latentq.test").makeRecord(
        "latentq.test", level, __file__, 1, message, args, None, extra=extra or None
    )
    return made


def json_line(made: logging.LogRecord, process: str = "worker") -> dict:
    text = JsonFormatter(process).format(made)
    assert text.splitlines() == [text]  # one line, whatever the message holds
    return json.loads(text)


def test_a_json_line_has_the_schema_fields():
    line = json_line(record("job %s took %d ms", "j-1", 12))
    assert list(line)[:5] == ["timestamp", "level", "process", "logger", "event"]
    assert line["event"] == "job j-1 took 12 ms"
    assert (line["level"], line["process"], line["logger"]) == ("info", "worker", "latentq.test")
    assert line["timestamp"].endswith("Z") and len(line["timestamp"]) == len("2026-01-01T00:00:00.000Z")


def test_context_fields_and_extras_are_fields_of_the_line():
    with log_context(job_id="j-1", account="acct", request_id=None):
        line = json_line(record("round", batch_size=3, idle_ms=1.5))
    assert (line["job_id"], line["account"], line["batch_size"], line["idle_ms"]) == ("j-1", "acct", 3, 1.5)
    assert "request_id" not in line  # None is left out
    assert "job_id" not in json_line(record("after"))  # the block's fields are gone after it


def test_fields_added_part_way_last_until_the_enclosing_context_ends():
    with log_context(request_id="r-1"):
        add_log_fields(account="acct")
        assert dict(log_fields()) == {"request_id": "r-1", "account": "acct"}
    assert dict(log_fields()) == {}


def test_an_exception_is_one_field():
    try:
        raise ValueError("bad\nvalue")
    except ValueError:
        made = record("failed", level=logging.ERROR)
        made.exc_info = sys.exc_info()
    line = json_line(made)
    assert line["level"] == "error"
    assert line["exception"].startswith("Traceback") and "ValueError: bad\nvalue" in line["exception"]


@pytest.mark.parametrize(
    "message",
    ["first\nsecond\r\nthird", "prompt: 灯台 at dusk — ünïcödé ✓", "separators\u2028here\u2029and\x85there"],
)
def test_any_message_stays_one_line_and_round_trips(message):
    line = json_line(record("%s", message))
    assert line["event"] == message


def test_non_ascii_is_written_as_is():
    assert "灯台" in JsonFormatter("api").format(record("灯台"))


def test_values_json_cannot_write_are_written_as_text():
    assert json_line(record("x", where=object()))["where"].startswith("<object object")


def test_a_uvicorn_access_line_has_its_parts_as_fields():
    made = logging.getLogger("uvicorn.access").makeRecord(
        "uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5000", "POST", "/v1/generate", "1.1", 202), None,
    )  # fmt: skip
    line = json_line(made, "api")
    assert (line["method"], line["path"], line["status"], line["client"]) == (
        "POST", "/v1/generate", 202, "127.0.0.1:5000",
    )  # fmt: skip


def test_the_text_format_is_for_people():
    formatter = TextFormatter()
    with log_context(job_id="j-1"):
        text = formatter.format(record("job %s succeeded", "j-1", batch_size=2))
    assert "INFO latentq.test: job j-1 succeeded [job_id=j-1 batch_size=2]" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_job_log_fields_come_from_the_spec():
    spec = JobSpec(
        job_id="j-1", model="m", prompts=[WeightedPrompt(text="a", weight=1)], width=64, height=64,
        steps=2, cfg_scale=7, samples=1, seed=1, sampler="K_EULER", folder="acct/j-1", request_id="r-1",
    )  # fmt: skip
    assert job_log_fields(spec) == {"job_id": "j-1", "account": "acct", "request_id": "r-1"}
    old = spec.model_copy(update={"folder": "", "request_id": None})  # queued by an older release
    assert job_log_fields(old) == {"job_id": "j-1", "account": None, "request_id": None}


def test_a_periodic_thread_logs_in_its_makers_context():
    seen: list[dict] = []
    called = threading.Event()

    def call() -> None:
        seen.append(dict(log_fields()))
        called.set()

    with log_context(job_id="j-1"), Periodic(call, 0.01, lambda error: None, "test"):
        assert called.wait(5)
    assert seen[0] == {"job_id": "j-1"}


@pytest.fixture
def restored_logging() -> Iterator[None]:
    """Put the root logger, uvicorn's loggers and the hooks back as they were after the test."""
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    saved = (root.handlers[:], root.level, access.handlers[:], access.propagate, sys.excepthook,
             threading.excepthook)  # fmt: skip
    yield
    root.handlers[:], access.handlers[:] = saved[0], saved[2]
    root.setLevel(saved[1])
    access.propagate, sys.excepthook, threading.excepthook = saved[3], saved[4], saved[5]
    logging.captureWarnings(False)


def test_configure_logging_routes_uvicorn_and_library_handlers_through_the_format(restored_logging):
    access = logging.getLogger("uvicorn.access")
    access.handlers[:] = [logging.StreamHandler(sys.stdout)]  # as uvicorn's own configuration leaves it
    access.propagate = False
    library = logging.getLogger("latentq.test.library")  # a library with a handler of its own
    own = logging.StreamHandler(sys.stderr)
    library.addHandler(own)
    try:
        configure_logging("api", CommonSettings(log_format="json", log_level="warning"))
        assert (access.handlers, access.propagate) == ([], True)
        assert isinstance(own.formatter, JsonFormatter)
        root = logging.getLogger()
        assert root.level == logging.WARNING and len(root.handlers) == 1
        stream = io.StringIO()
        root.handlers[0].setStream(stream)  # type: ignore[attr-defined]
        chatty = logging.getLogger("latentq.test.chatty")
        chatty.setLevel(logging.INFO)  # as uvicorn and RQ set theirs
        with log_context(request_id="r-1"):
            chatty.info("below the level: left out")
            logging.getLogger("latentq.api").warning("refused")
        line = json.loads(stream.getvalue())
        assert (line["process"], line["event"], line["request_id"]) == ("api", "refused", "r-1")
    finally:
        library.removeHandler(own)


def test_log_settings_take_any_case():
    settings = CommonSettings(log_format="TEXT", log_level="debug")
    assert (settings.log_format, settings.log_level) == ("text", "DEBUG")
    with pytest.raises(ValueError):
        CommonSettings(log_format="xml")
