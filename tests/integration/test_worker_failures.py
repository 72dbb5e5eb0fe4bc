"""A job that fails ends ``failed`` with a named reason, and its worker goes on serving."""

from __future__ import annotations

import json
import shutil

import httpx
import pytest

from tests.conftest import API_KEY, api_settings, running_worker, serve, service_env, wait_for_job

SMALL = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}


@pytest.mark.slow
def test_job_over_its_time_limit_fails_with_timeout_and_the_worker_serves_on(redis_server, s3_server, worker):
    # A second API front end with a one-second job limit, on the same Redis and queue.
    with serve(api_settings(redis_server, s3_server, job_timeout_s=1)) as url:
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        long = client.post("/v1/generate", json={**SMALL, "width": 1024, "height": 1024, "steps": 150})
        after = client.post("/v1/generate", json=SMALL)

        failed = wait_for_job(client, long.json()["id"], timeout_s=120)
        assert failed["status"] == "failed"
        assert failed["error"]["name"] == "timeout"
        assert failed["images"] == []
        assert failed["finished_at"]

        assert wait_for_job(client, after.json()["id"])["status"] == "succeeded"
    assert worker.popen.poll() is None


@pytest.fixture
def broken_model(tiny_model, tmp_path):
    """The tiny model with a tokenizer that pads past the text encoder's 77 positions: it loads,
    then every sampling call raises inside the pipeline."""
    broken = tmp_path / "broken-sd"
    shutil.copytree(tiny_model, broken)
    config_path = broken / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["model_max_length"] = 100
    config_path.write_text(json.dumps(config))
    return broken


@pytest.mark.slow
def test_pipeline_error_fails_the_job_with_its_reason_and_the_worker_serves_on(
    redis_server, s3_server, broken_model, tmp_path
):
    entry = {"id": "broken", "source": str(broken_model), "family": "sd1", "limits": {"min_side": 64,
             "min_pixels": 4096}, "defaults": {"width": 64, "height": 64}}  # fmt: skip
    env = service_env(
        redis_server, s3_server, models=json.dumps([entry]), worker_models="broken", warmup="false"
    )
    with (
        running_worker(env, tmp_path / "worker.log", "broken") as process,
        serve(api_settings(redis_server, s3_server, models=[entry], default_model="broken")) as url,
    ):
        client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        ids = [client.post("/v1/generate", json=SMALL).json()["id"] for _ in range(2)]
        for job_id in ids:
            job = wait_for_job(client, job_id)
            assert job["status"] == "failed"
            assert job["error"]["name"] == "generation_failed"
            assert job["error"]["message"].startswith("ValueError: Sequence length must be less than")
        assert process.popen.poll() is None
