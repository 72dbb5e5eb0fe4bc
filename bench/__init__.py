"""Benchmarks: one command each (``python -m bench.<name>``), a table printed and JSON written."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(path: Path | None, result: dict) -> None:
    """Write a benchmark's ``result`` as JSON to ``path`` (its folder made if needed), when given."""
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
