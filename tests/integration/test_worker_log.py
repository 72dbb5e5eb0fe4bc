"""What a worker's log shows: its own lines, each a JSON object, without the libraries' notices
about choices made on purpose (no torchvision, no safety checker), deprecation warnings our calls
cause, or progress bars."""

from __future__ import annotations

import json

import pytest

#: What the log of a worker started before this change showed, and must not show now.
NOISE = ("requires torchvision", "safety checker", "FutureWarning", "torch_dtype", "it/s]", "\r")


@pytest.mark.parametrize("fixture", ["worker", "image_worker"])
def test_a_worker_logs_its_start_without_third_party_noise(request, fixture):
    process = request.getfixturevalue(fixture)  # ready: its models loaded and warmed up
    log = process.log_path.read_text()
    assert "worker ready for models" in log
    assert not [part for part in NOISE if part in log], log[:3000]
    # Every line is a JSON object (latentq.logs), the libraries' own lines included.
    lines = [json.loads(line) for line in log.splitlines()]
    assert {line["process"] for line in lines} == {"worker"}
