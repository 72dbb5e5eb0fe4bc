"""Metrics and probes of real processes: a worker (``python -m worker``) and a dispatcher with
``LATENTQ_METRICS_PORT`` set, and an API serving ``/metrics`` on its own port and a second one,
scraped and parsed as Prometheus does while jobs run through them.

The worker serves ``metrics-sd`` (the tiny model under an id of its own, so no other test's worker
takes its jobs); ``metrics-idle`` is served by no worker, so its jobs stay queued."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis import Redis
from rq import Queue, Worker

from latentq.fair_share import pending_key
from latentq.keys import queue_name
from latentq_dev.devstack import Process, free_port, wait_until
from tests.conftest import API_KEY, api_settings, serve, service_env, wait_for_job
from tests.integration.webhook_harness import Dispatcher

LIMITS = {"min_side": 64, "max_side": 1024, "min_pixels": 4096, "max_pixels": 1048576}
DEFAULTS = {"width": 64, "height": 64, "steps": 20, "sampler": "K_EULER"}
MODELS = [
    {"id": model, "source": "embedded:tiny-sd", "family": "sd1", "limits": LIMITS, "defaults": DEFAULTS}
    for model in ("metrics-sd", "metrics-idle")
]
BODY = {"prompt": "a lighthouse", "model": "metrics-sd", "width": 64, "height": 64, "steps": 3}
#: What a job id (a UUID) looks like: no label value may.
JOB_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Return every sample of the Prometheus text at ``url``: (name, sorted labels) → value."""
    text = httpx.get(url, timeout=10).raise_for_status().text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def status(url: str) -> int | None:
    """Return the status of ``GET url``; None while nothing listens."""
    try:
        return httpx.get(url, timeout=5).status_code
    except httpx.TransportError:
        return None


@pytest.fixture(scope="module")
def metrics_api(redis_server, s3_server) -> Iterator[tuple[httpx.Client, int]]:
    """An API knowing both models, whose jobs wait their account's turn behind one queued job (so
    some wait in fair-share lists), serving /metrics on its port and on a second one."""
    port = free_port()
    settings = api_settings(
        redis_server, s3_server, models=MODELS, fair_queue_depth=1, metrics_port=port,
        webhook_allowed_hosts=("127.0.0.1",),
    )  # fmt: skip
    with serve(settings) as url, httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"},
                                              timeout=30) as client:  # fmt: skip
        yield client, port


@pytest.fixture(scope="module")
def metrics_worker(redis_server, s3_server, models_dir, tiny_model, tmp_path_factory):
    """A worker of ``metrics-sd`` with its listener on a free port; yields it, the listener's base URL
    and the /readyz statuses seen from its start until it took jobs."""
    port = free_port()
    env = service_env(
        redis_server, s3_server, embedded_model_dir=str(models_dir), worker_models="metrics-sd",
        models=json.dumps(MODELS), heartbeat_interval_s="1", fair_queue_depth="1",
        worker_name="metrics-worker", metrics_port=str(port), metrics_host="127.0.0.1", drain_timeout_s="300",
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("logs") / "metrics-worker.log"
    process = Process.start("worker", [sys.executable, "-m", "worker"], log, env)
    seen: list[int] = []
    try:

        def ready() -> bool:
            answer = status(f"{base}/readyz")
            if answer is not None and (not seen or seen[-1] != answer):
                seen.append(answer)
            return answer == 200

        wait_until(ready, 180, "the worker's /readyz", process)
        queue = Queue(queue_name("metrics-sd"), connection=Redis.from_url(redis_server.url))
        wait_until(lambda: Worker.count(queue=queue) > 0, 30, "the worker's registration", process)
        yield process, base, seen
    finally:
        process.stop()


def test_a_worker_is_ready_only_once_its_models_are_warm_and_live_all_along(metrics_worker):
    process, base, seen = metrics_worker
    assert seen[0] == 503 and seen[-1] == 200, seen  # listening from start-up, ready after warm-up
    assert "warm-up generation of metrics-sd" in process.log_path.read_text()
    assert status(f"{base}/livez") == 200
    samples = scrape(f"{base}/metrics")  # its models' series exist before their first job: 0, not absent
    assert ("latentq_worker_jobs_running", (("model", "metrics-sd"),)) in samples


def test_a_job_moves_the_api_and_worker_metrics_with_bounded_labels(metrics_api, metrics_worker):
    client, api_port = metrics_api
    _, base, _ = metrics_worker
    worker_before, api_before = scrape(f"{base}/metrics"), scrape(f"{client.base_url}/metrics")
    job = client.post("/v1/generate", json=BODY)
    assert job.status_code == 202
    assert wait_for_job(client, job.json()["id"])["status"] == "succeeded"

    worker, api = scrape(f"{base}/metrics"), scrape(f"{client.base_url}/metrics")
    model = {"model": "metrics-sd"}
    outcome = {**model, "task": "text-to-image", "outcome": "succeeded"}
    for name, labels, more in [
        ("latentq_jobs_finished_total", outcome, 1),
        ("latentq_images_generated_total", model, 1),
        ("latentq_sampling_steps_total", model, 3),
        ("latentq_job_queue_wait_seconds_count", model, 1),
        ("latentq_job_sampling_seconds_count", model, 1),
        ("latentq_job_upload_seconds_count", model, 1),
        ("latentq_job_end_to_end_seconds_count", model, 1),
        ("latentq_worker_batch_size_count", model, 1),
        ("latentq_worker_round_idle_seconds_count", {}, 1),  # one round: its idle gap before it
    ]:
        assert sample(worker, name, **labels) == sample(worker_before, name, **labels) + more, name
    assert sample(worker, "latentq_worker_sampling_seconds_total", **model) > 0
    assert sample(worker, "latentq_worker_jobs_running", **model) == 0
    # The busy ratio, read at the scrape: it sampled a while since it started, and not all the time.
    assert 0 < sample(worker, "latentq_worker_busy_ratio", window="start") < 1
    assert 0 < sample(worker, "latentq_worker_busy_ratio", window="60s") < 1
    assert sample(worker, "process_resident_memory_bytes") > 0

    submitted = {"model": "metrics-sd", "task": "text-to-image"}
    assert (
        sample(api, "latentq_jobs_submitted_total", **submitted)
        == sample(api_before, "latentq_jobs_submitted_total", **submitted) + 1
    )
    assert sample(api, "latentq_http_requests_total", method="POST", route="/v1/generate", status="202") >= 1
    assert (
        sample(api, "latentq_http_requests_total", method="GET", route="/v1/jobs/{job_id}", status="200") >= 1
    )
    assert sample(api, "latentq_queue_stats_up") == 1
    # The second port serves the same process's metrics.
    assert ("latentq_jobs_submitted_total", tuple(sorted(submitted.items()))) in scrape(
        f"http://127.0.0.1:{api_port}/metrics"
    )
    for samples in (worker, api):
        values = {value for _, labels in samples for _, value in labels}
        assert not [value for value in values if JOB_ID.search(value) or job.json()["id"] in value]


def test_metrics_are_neither_behind_the_key_nor_in_the_openapi_description(metrics_api):
    client, _ = metrics_api
    assert httpx.get(f"{client.base_url}/metrics").status_code == 200
    assert "/metrics" not in client.get("/openapi.json").json()["paths"]


def test_queue_depth_counts_the_jobs_in_rq_and_in_the_fair_share_lists(metrics_api, redis):
    client, _ = metrics_api
    ids = [client.post("/v1/generate", json={**BODY, "model": "metrics-idle"}).json()["id"] for _ in range(3)]
    try:
        assert int(redis.get(pending_key(queue_name("metrics-idle"))) or 0) == 2  # one in RQ's queue
        time.sleep(0.2)
        samples = scrape(f"{client.base_url}/metrics")
        assert sample(samples, "latentq_queue_depth", model="metrics-idle") == 3
        assert sample(samples, "latentq_queue_oldest_job_age_seconds", model="metrics-idle") >= 0.2
        assert sample(samples, "latentq_queue_depth", model="metrics-sd") == 0
    finally:
        for job_id in ids:
            client.post(f"/v1/jobs/{job_id}/cancel")
    samples = scrape(f"{client.base_url}/metrics")
    assert sample(samples, "latentq_queue_depth", model="metrics-idle") == 0
    assert sample(samples, "latentq_queue_oldest_job_age_seconds", model="metrics-idle") == 0


def test_the_dispatcher_counts_each_delivery_by_outcome(
    redis_server, s3_server, metrics_api, metrics_worker, receiver, tmp_path
):
    client, _ = metrics_api
    port = free_port()
    env = service_env(
        redis_server, s3_server, webhook_allowed_hosts="127.0.0.1", dispatcher_name="metrics-dispatcher",
        metrics_port=str(port), metrics_host="127.0.0.1",
    )  # fmt: skip
    dispatcher = Dispatcher(env, tmp_path / "dispatcher.log")
    dispatcher.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(
            lambda: status(f"{base}/readyz") == 200, 60, "the dispatcher's /readyz", dispatcher.process
        )
        assert status(f"{base}/livez") == 200
        job = client.post("/v1/generate", json={**BODY, "webhook_url": receiver.url("/metrics-hook")})
        receiver.wait("/metrics-hook", 1)
        completed = {"event": "completed", "outcome": "delivered"}
        wait_until(
            lambda: sample(scrape(f"{base}/metrics"), "latentq_webhook_deliveries_total", **completed) >= 1,
            10, "the delivery's count",
        )  # fmt: skip
        samples = scrape(f"{base}/metrics")
        assert sample(samples, "latentq_webhook_post_duration_seconds_count") >= 1
        assert not [value for _, labels in samples for _, value in labels if job.json()["id"] in value]
    finally:
        dispatcher.stop()


def test_a_draining_worker_is_not_ready(metrics_api, metrics_worker):
    """Last: it stops the module's worker."""
    client, _ = metrics_api
    process, base, _ = metrics_worker
    job = client.post("/v1/generate", json={**BODY, "width": 256, "height": 256, "steps": 150}).json()
    wait_until(
        lambda: client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running", 60, "the job's start"
    )
    # 150 steps: it still samples for seconds after it is seen running, while the probes are read.
    os.kill(process.popen.pid, signal.SIGTERM)  # warm shutdown: it finishes the job first
    # Python runs the handler when the sampling thread next returns to the interpreter (a step's
    # callback): not necessarily before the first read below.
    wait_until(lambda: status(f"{base}/readyz") == 503, 30, "not ready while draining")
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "running"  # still draining
    assert status(f"{base}/livez") == 200  # draining, not stuck
    assert wait_for_job(client, job["id"], timeout_s=300)["status"] == "succeeded"  # drained
    assert process.popen.wait(timeout=60) == 0
