"""The device check's stage runner (``bench.gpu_check``) and ``bench.gpu``'s per-row errors, on CPU:
a failing, crashing or hanging stage is recorded and the run goes on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from bench.gpu import measure, model_rows
from bench.gpu_check import Stage, main, run_stages, stages


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "check.jsonl").read_text().splitlines()]


def gone(pid: int) -> bool:
    """Whether process ``pid`` has ended (no such process, or a zombie left to its new parent)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z")
    except FileNotFoundError:
        return True


def test_a_failing_or_hanging_stage_is_recorded_and_the_next_stage_still_runs(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    hang = (f"import subprocess, pathlib, time; child = subprocess.Popen(['sleep', '60']); "
            f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid)); time.sleep(60)")  # fmt: skip
    plan = [
        Stage("fails", 20, python("import sys; print('about to fail'); sys.exit(3)")),
        Stage("crashes", 20, python("import os; os.abort()")),
        Stage("hangs", 2, python(hang)),
        Stage("runs", 20, python("print('still ran')")),
    ]
    started = time.monotonic()
    results = run_stages(plan, tmp_path, total_s=60)
    assert time.monotonic() - started < 30  # the hanging stage was cut at its 2 s, not left to its 60 s
    assert [(row["stage"], row["status"]) for row in results] == [
        ("fails", "failed"), ("crashes", "failed"), ("hangs", "timeout"), ("runs", "ok")]  # fmt: skip
    assert results[0]["returncode"] == 3 and results[1]["returncode"] < 0  # killed by SIGABRT
    assert results[2]["returncode"] is None and 2 <= results[2]["seconds"] < 10
    assert gone(int(pid_file.read_text()))  # the stage's whole process group was killed
    assert [row["stage"] for row in rows(tmp_path)] == ["fails", "crashes", "hangs", "runs"]
    log = (tmp_path / "check.log").read_text()
    assert "about to fail" in log and "still ran" in log and "===== stage hangs" in log


def test_a_stage_whose_budget_no_longer_fits_the_total_is_skipped_and_recorded(tmp_path):
    plan = [Stage("slow", 3, python("import time; time.sleep(1.5)")), Stage("next", 3, python("pass")),
            Stage("short", 0.5, python("pass"))]  # fmt: skip
    results = run_stages(plan, tmp_path, total_s=4)
    assert [(row["stage"], row["status"]) for row in results] == [("slow", "ok"), ("next", "skipped"),
                                                                   ("short", "ok")]  # fmt: skip
    assert "left of the total" in results[1]["message"]


def test_the_plan_covers_every_stage_of_the_issue_and_fits_a_device_command(tmp_path):
    plan = stages(tmp_path / "check.jsonl", dry_run=False)
    assert [stage.name for stage in plan] == ["env", "pytest", "embedded", "memory", "channels_last",
                                              "bench_gpu", "flow_gpu", "compile"]  # fmt: skip
    # One device command may run 600 s; the check must leave room for the start and the transfers.
    assert sum(stage.budget_s for stage in plan) <= 500
    assert plan[-1].env == {"TORCH_LOGS": "recompiles"}
    assert all(
        "--dry-run" in stage.argv or "--tiny" in stage.argv for stage in stages(tmp_path, dry_run=True)
    )


def test_main_exits_non_zero_when_a_stage_failed(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "bench.gpu_check.stages", lambda _rows, _dry: [Stage("fails", 20, python("raise SystemExit(1)"))]
    )
    assert main(["--out", str(tmp_path)]) == 1
    monkeypatch.setattr("bench.gpu_check.stages", lambda _rows, _dry: [Stage("runs", 20, python("pass"))])
    assert main(["--out", str(tmp_path)]) == 0


class FailingWarm:
    """A warm pipeline whose every call fails (as a CUDA error, a shape error or an OOM would)."""

    device = torch.device("cpu")
    scheduler_config: dict = {}

    def generate_batch(self, members):
        raise RuntimeError(f"no kernel for {len(members)} images")


def test_bench_gpu_records_any_error_in_its_row_and_goes_on(monkeypatch):
    row = measure(FailingWarm(), "worker batch", "sd15", 64, 2, 1)
    assert row["error"] == "RuntimeError" and row["message"] == "no kernel for 2 images"
    assert row["cfg"] == 7.0 and row["path"] == "worker batch"
    monkeypatch.setattr("worker.diffusion.pipelines.WarmPipeline", lambda *_args, **_kwargs: FailingWarm())
    monkeypatch.setattr("bench.gpu.build", lambda *_args: None)

    class Arguments:
        side, tiny, compile, batches, steps = 64, True, False, [1, 8], 1

    got = list(model_rows("sd15", Arguments(), torch.device("cpu")))
    assert [(row["batch"], row["path"], row["error"]) for row in got] == [
        (1, "direct", "AttributeError"), (1, "worker batch", "RuntimeError"),
        (8, "direct", "AttributeError"), (8, "worker batch", "RuntimeError")]  # fmt: skip


def test_the_pytest_plugin_writes_each_test_outcome_as_it_finishes(tmp_path):
    (tmp_path / "test_sample.py").write_text(
        "import pytest\n"
        "def test_passes(): pass\n"
        "def test_fails(): assert 1 == 2, 'one is not two'\n"
        "@pytest.mark.skip(reason='no CUDA device')\n"
        "def test_skipped(): pass\n"
    )
    out = tmp_path / "rows.jsonl"
    repository = Path(__file__).resolve().parents[2]
    argv = [sys.executable, "-m", "pytest", str(tmp_path / "test_sample.py"), "-q", "-p", "no:cacheprovider",
            "-p", "bench.pytest_rows", "--rows", str(out)]  # fmt: skip
    completed = subprocess.run(argv, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(repository)},
                               capture_output=True, text=True, timeout=120)  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    got = {row["test"].split("::")[1]: row for row in map(json.loads, out.read_text().splitlines())}
    assert {name: row["outcome"] for name, row in got.items()} == {
        "test_passes": "passed", "test_fails": "failed", "test_skipped": "skipped"}  # fmt: skip
    assert "one is not two" in got["test_fails"]["message"]
    assert got["test_skipped"]["message"] == "no CUDA device"
