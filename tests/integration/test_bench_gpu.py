"""``bench.gpu`` and ``bench.flow_gpu`` end to end on CPU with tiny models and configurations: every
row is written as it finishes, both paths of a batch size run with the same configuration."""

from __future__ import annotations

import json

import pytest

from bench import flow_gpu, gpu

pytestmark = pytest.mark.slow


def read_rows(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_bench_gpu_writes_a_row_per_model_batch_and_path_with_one_configuration(tmp_path):
    rows_path = tmp_path / "gpu.jsonl"
    argv = ["--device", "cpu", "--tiny", "--side", "64", "--steps", "1", "--batches", "1", "2",
            "--jsonl", str(rows_path)]  # fmt: skip
    assert gpu.main(argv) == 0
    rows = read_rows(rows_path)
    assert [(row["model"], row["batch"], row["path"]) for row in rows] == [
        (model, batch, path)
        for model in ("sd15", "sdxl")
        for batch in (1, 2)
        for path in ("direct", "worker batch")
    ]
    assert all("error" not in row and row["images_per_s"] > 0 for row in rows), rows
    assert {(row["cfg"], row["steps"], row["side"]) for row in rows} == {(7.0, 1, 64)}


def test_flow_gpu_measures_both_architectures_in_bf16_with_their_encoders(tmp_path):
    rows_path = tmp_path / "flow.jsonl"
    assert (
        flow_gpu.main(
            ["--device", "cpu", "--tiny", "--side", "64", "--steps", "1", "--jsonl", str(rows_path)]
        )
        == 0
    )
    rows = read_rows(rows_path)
    assert [row["model"] for row in rows] == ["flux-dev", "sd3.5-large"]
    for row in rows:
        assert "error" not in row, row
        assert row["dtype"] == "bfloat16" and row["seconds_per_step"] > 0
        assert {"clip-l", "t5-xxl", "vae decode"} <= set(row["seconds"])
    assert "clip-g" in rows[1]["weights_gib"] and "clip-g" not in rows[0]["weights_gib"]
