"""A pytest plugin (``-p bench.pytest_rows --rows FILE``): one JSON line per test as it finishes.

``bench.gpu_check`` runs the GPU-marked tests under a time limit; a JUnit report is written only
at the end of the session, so a run cut short by its limit would leave nothing. This plugin
appends each test's outcome when it is known instead.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench import append_row

#: Where the rows go (``--rows``); None: the plugin writes nothing.
_ROWS: list[Path] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--rows FILE``."""
    parser.addoption("--rows", type=Path, default=None, help="append one JSON line per test here")


def pytest_configure(config: pytest.Config) -> None:
    """Remember ``--rows``."""
    path = config.getoption("rows")
    if path is not None:
        _ROWS.append(path)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Append the test's outcome: from its call, or from its set-up or tear-down where that failed
    or skipped it (seconds of that phase; the exception's message, or the skip's reason)."""
    if not _ROWS or (report.when != "call" and report.passed):
        return
    row = {"stage": "pytest", "test": report.nodeid, "phase": report.when, "outcome": report.outcome,
           "seconds": round(report.duration, 3)}  # fmt: skip
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)  # the exception's own line, where pytest kept it
        row["message"] = (crash.message if crash else str(report.longrepr))[:500]
    elif report.skipped and isinstance(report.longrepr, tuple):
        row["message"] = str(report.longrepr[2]).removeprefix("Skipped: ")[:500]
    append_row(_ROWS[-1], row)
