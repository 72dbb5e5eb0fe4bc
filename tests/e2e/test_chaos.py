"""The chaos harness (``bench/chaos``) in a small configuration: jobs from concurrent clients while
workers are SIGKILLed (one while claiming a round) and SIGTERMed, Redis is killed with ``kill -9``
and restarted from its AOF, S3 is killed and restarted and the dispatcher is killed mid-delivery;
every accepted job must end exactly once, with nothing lost, duplicated, stuck or orphaned."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from latentq_dev.devstack import environment_without_settings
from tests.conftest import REPO


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_nothing_accepted_is_lost_or_done_twice_under_chaos(tmp_path):
    report_path = tmp_path / "chaos.json"
    # One submit a second: the tiny model finishes a job in well under a second, so submits spread
    # over the run keep workers busy whenever a fault looks for one (at 30/s all 60 jobs were done
    # before the later faults' turn, and those faults found no busy worker to kill).
    argv = [sys.executable, "-m", "bench.chaos", "--jobs", "60", "--kills", "3", "--rate", "1",
            "--deadline-s", "240",
            "--state", str(tmp_path / "stack"), "--json", str(report_path)]  # fmt: skip
    run = subprocess.run(argv, cwd=REPO, env=environment_without_settings(), capture_output=True, text=True,
                         timeout=580)  # fmt: skip
    assert report_path.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_path.read_text())
    # The faults were all made ...
    assert report["kills"] == 3 and report["kills_on_claim"] == 1, report["faults"]
    assert report["sigterm_exit"] == 0 and report["redis_down_s"] > 0 and report["s3_down_s"] > 0
    assert report["dispatcher_killed_in_flight"] is not None
    # ... and every job accepted ended once: nothing lost (beyond the AOF window, reported apart),
    # duplicated, stuck, orphaned or left in RQ's lists; every webhook arrived; no 5xx but 503.
    assert report["accepted"] == 60
    for name in ("lost", "duplicated", "stuck", "orphaned_objects", "left_in_rq", "webhooks_missing",
                 "read_errors", "server_errors", "gave_up"):  # fmt: skip
        assert report[name] == 0, (name, report["problems"])
    assert report["unexpected_exits"] == [], report["exit_logs"]
    assert report["succeeded"] + report["failed"] + report["canceled"] + report["lost_aof_window"] == 60
    assert run.returncode == 0
