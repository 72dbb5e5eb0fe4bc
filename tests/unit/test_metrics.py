"""Metrics without services: the probe listener and its vitals, what a job's run counts (with the
runner's fakes), the GPU memory gauges (with a fake ``torch.cuda``), the HTTP metrics' bounded
labels, and queue gauges that neither fail nor hang a scrape while Redis is away."""

from __future__ import annotations

import socket
import threading
import time
import urllib.error
import urllib.request

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Receive, Scope, Send

from api.metrics import HTTP_REQUESTS, HttpMetrics, metrics_port
from api.metrics import REGISTRY as API_REGISTRY
from latentq.metrics import QueueStats, stamp_seconds
from latentq.probes import ProbeServer, Vitals
from latentq.settings import CommonSettings
from latentq_dev.devrun import metrics_ports
from latentq_dev.devstack import free_port
from tests.unit.test_runner import FakePipeline, spec, warm
from worker.context import JobContext
from worker.metrics import REGISTRY as WORKER_REGISTRY
from worker.metrics import ROUND_IDLE, GpuMemory, Utilisation
from worker.rounds import SamplingRound
from worker.runner import run_job


def value(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


# -- probes ------------------------------------------------------------------------------------
def test_vitals_are_live_until_a_loop_is_late_and_forget_ended_loops():
    vitals = Vitals()
    assert vitals.live()  # no loop started yet: starting up
    vitals.expect("job loop", 60)
    vitals.expect("heartbeat", -1)  # its deadline passed
    assert not vitals.live() and vitals.late() == ["heartbeat"]
    vitals.forget("heartbeat")
    assert vitals.live()


def test_the_probe_listener_serves_metrics_liveness_and_readiness():
    vitals = Vitals()
    server = ProbeServer("127.0.0.1", 0, lambda: b"latentq_example 1\n", vitals).start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        assert get(f"{base}/metrics") == (200, b"latentq_example 1\n")
        assert get(f"{base}/livez")[0] == 200
        assert get(f"{base}/readyz")[0] == 503  # not ready until the process says so
        vitals.ready = True
        assert get(f"{base}/readyz")[0] == 200
        vitals.expect("job loop", -1)  # stuck: neither live nor ready
        assert get(f"{base}/livez")[0] == 503 and get(f"{base}/readyz")[0] == 503
        assert get(f"{base}/other")[0] == 404
    finally:
        server.stop()


def test_a_listener_without_metrics_still_answers_its_probes():
    server = ProbeServer("127.0.0.1", 0, None, Vitals()).start()
    try:
        assert get(f"http://127.0.0.1:{server.port}/metrics")[0] == 404
        assert get(f"http://127.0.0.1:{server.port}/livez")[0] == 200
    finally:
        server.stop()


# -- what a job's run counts ---------------------------------------------------------------------
def finished(outcome: str, model: str = "m") -> float:
    return value(WORKER_REGISTRY, "latentq_jobs_finished_total", model=model, task="text-to-image",
                 outcome=outcome)  # fmt: skip


def test_a_succeeded_job_counts_its_outcome_stages_images_and_steps():
    before = {
        "ok": finished("succeeded"),
        "images": value(WORKER_REGISTRY, "latentq_images_generated_total", model="m"),
        "steps": value(WORKER_REGISTRY, "latentq_sampling_steps_total", model="m"),
        "sampling": value(WORKER_REGISTRY, "latentq_job_sampling_seconds_count", model="m"),
        "upload": value(WORKER_REGISTRY, "latentq_job_upload_seconds_count", model="m"),
        "e2e": value(WORKER_REGISTRY, "latentq_job_end_to_end_seconds_count", model="m"),
    }
    run_job(JobContext(warm(FakePipeline()), submitted_at=time.time() - 2), spec(samples=2, steps=4))
    assert finished("succeeded") == before["ok"] + 1
    assert value(WORKER_REGISTRY, "latentq_images_generated_total", model="m") == before["images"] + 2
    assert value(WORKER_REGISTRY, "latentq_sampling_steps_total", model="m") == before["steps"] + 8
    assert value(WORKER_REGISTRY, "latentq_job_sampling_seconds_count", model="m") == before["sampling"] + 1
    assert value(WORKER_REGISTRY, "latentq_job_upload_seconds_count", model="m") == before["upload"] + 1
    assert value(WORKER_REGISTRY, "latentq_job_end_to_end_seconds_count", model="m") == before["e2e"] + 1


def test_failed_and_canceled_jobs_count_under_their_outcome():
    failed, canceled = finished("generation_failed"), finished("canceled")
    with pytest.raises(ValueError):
        run_job(JobContext(warm(FakePipeline(broken=("job-1",)))), spec())
    state = warm(FakePipeline(at_step={2: lambda job: state.cancels.cancel(job.job_id)}))
    run_job(JobContext(state), spec("job-2"))
    assert finished("generation_failed") == failed + 1
    assert finished("canceled") == canceled + 1


def test_an_unserved_model_is_counted_as_other_never_under_its_own_name():
    other = finished("generation_failed", model="other")
    with pytest.raises(LookupError):
        run_job(JobContext(warm(FakePipeline())), spec(model="not-served"))
    assert finished("generation_failed", model="other") == other + 1
    assert "not-served" not in generate_latest(WORKER_REGISTRY).decode()


def test_a_batched_call_counts_its_size_and_the_seconds_it_sampled():
    state = warm(FakePipeline())
    sizes = value(WORKER_REGISTRY, "latentq_worker_batch_size_sum", model="m")
    busy = value(WORKER_REGISTRY, "latentq_worker_sampling_seconds_total", model="m")
    round_ = SamplingRound(3)
    threads = [
        threading.Thread(target=run_job, args=(JobContext(state, round_.seat()), spec(f"j{index}")))
        for index in range(3)
    ]
    for thread in threads:
        thread.start()
    round_.run(max_images=8)
    for thread in threads:
        thread.join(10)
    assert value(WORKER_REGISTRY, "latentq_worker_batch_size_sum", model="m") == sizes + 3  # one call of 3
    assert value(WORKER_REGISTRY, "latentq_worker_sampling_seconds_total", model="m") > busy


# -- GPU memory ----------------------------------------------------------------------------------
class FakeCuda:
    """What ``GpuMemory`` reads of ``torch.cuda``: two devices with fixed figures."""

    def __init__(self, initialized: bool = True) -> None:
        self.initialized = initialized

    def is_available(self) -> bool:
        return True

    def is_initialized(self) -> bool:
        return self.initialized

    def device_count(self) -> int:
        return 2

    def memory_allocated(self, device: int) -> int:
        return 1000 + device

    def memory_reserved(self, device: int) -> int:
        return 2000 + device

    def max_memory_allocated(self, device: int) -> int:
        return 3000 + device


def test_gpu_memory_is_read_per_device_once_cuda_is_in_use():
    registry = CollectorRegistry()
    registry.register(GpuMemory(FakeCuda()))
    assert value(registry, "latentq_gpu_memory_allocated_bytes", device="cuda:1") == 1001
    assert value(registry, "latentq_gpu_memory_reserved_bytes", device="cuda:0") == 2000
    assert value(registry, "latentq_gpu_memory_peak_bytes", device="cuda:1") == 3001


def test_no_gpu_memory_before_cuda_is_in_use_or_without_it():
    for cuda in (FakeCuda(initialized=False), None):  # None: this CPU process's torch (or none)
        registry = CollectorRegistry()
        registry.register(GpuMemory(cuda))
        assert "latentq_gpu_memory_allocated_bytes{" not in generate_latest(registry).decode()


# -- HTTP metrics ----------------------------------------------------------------------------------
class RefuseBeforeRouting:
    """Answers 401 to any request carrying ``x-refuse``, before routing (as the request guard does)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and any(name == b"x-refuse" for name, _ in scope["headers"]):
            await send({"type": "http.response.start", "status": 401, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        await self.app(scope, receive, send)


@pytest.fixture
def http_client():
    app = FastAPI()

    @app.get("/v1/things/{thing_id}")
    def thing(thing_id: str) -> dict:
        return {"id": thing_id}

    @app.get("/broken")
    def broken() -> None:
        raise RuntimeError("broken")

    app.add_middleware(RefuseBeforeRouting)
    app.add_middleware(HttpMetrics)
    return TestClient(app, raise_server_exceptions=False)


def requests(method: str, route: str, status: int) -> float:
    return value(API_REGISTRY, "latentq_http_requests_total", method=method, route=route, status=str(status))


def test_requests_are_counted_by_route_template_never_by_raw_path(http_client):
    before = requests("GET", "/v1/things/{thing_id}", 200)
    http_client.get("/v1/things/0b5e2c1e-7a59-4a8e-9d55-4a2f8e3a1b6c")
    http_client.get("/v1/things/another")
    assert requests("GET", "/v1/things/{thing_id}", 200) == before + 2
    assert "0b5e2c1e" not in generate_latest(API_REGISTRY).decode()
    assert value(API_REGISTRY, "latentq_http_request_duration_seconds_count", method="GET",
                 route="/v1/things/{thing_id}") >= 2  # fmt: skip


def test_unknown_routes_methods_refusals_and_errors_get_bounded_labels(http_client):
    unmatched = requests("GET", "unmatched", 404)
    refused = requests("GET", "/v1/things/{thing_id}", 401)
    other = requests("other", "/v1/things/{thing_id}", 405)
    errors = requests("GET", "/broken", 500)
    for path in ("/nowhere/1", "/nowhere/2", "/v1/things/x/y"):
        assert http_client.get(path).status_code == 404
    http_client.get("/v1/things/x", headers={"x-refuse": "1"})  # refused before routing: its template
    http_client.request("BREW", "/v1/things/x")  # an unknown method: one label for all of them
    assert http_client.get("/broken").status_code == 500
    assert requests("GET", "unmatched", 404) == unmatched + 3
    assert requests("GET", "/v1/things/{thing_id}", 401) == refused + 1
    assert requests("other", "/v1/things/{thing_id}", 405) == other + 1
    assert requests("GET", "/broken", 500) == errors + 1
    routes = {sample.labels["route"] for family in HTTP_REQUESTS.collect() for sample in family.samples}
    assert not any("nowhere" in route for route in routes)


# -- queue gauges ----------------------------------------------------------------------------------
def test_queue_gauges_are_left_out_not_failed_while_redis_is_away():
    stats = QueueStats.for_settings(
        CommonSettings(redis_url=f"redis://127.0.0.1:{free_port()}/0"), ["tiny-sd"]
    )
    registry = CollectorRegistry()
    registry.register(stats)
    started = time.monotonic()
    text = generate_latest(registry).decode()
    assert time.monotonic() - started < 3
    assert "latentq_queue_stats_up 0.0" in text
    assert "latentq_queue_depth{" not in text


def test_queue_gauges_time_out_on_a_redis_that_does_not_answer():
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()  # accepts connections, never answers
    try:
        stats = QueueStats.for_settings(
            CommonSettings(redis_url=f"redis://127.0.0.1:{silent.getsockname()[1]}/0"), ["tiny-sd"]
        )
        started = time.monotonic()
        assert [family.name for family in stats.collect()] == ["latentq_queue_stats_up"]
        assert time.monotonic() - started < 3
    finally:
        silent.close()


def test_rq_timestamps_read_as_epoch_seconds():
    assert stamp_seconds(b"1970-01-01T00:01:40.500000Z") == 100.5
    assert stamp_seconds(None) is None and stamp_seconds("garbage") is None


def test_make_runs_one_metrics_port_goes_to_one_process_each():
    envs = metrics_ports({"LATENTQ_METRICS_PORT": "9090", "OTHER": "x"})
    assert envs["worker"]["LATENTQ_METRICS_PORT"] == "9090"
    assert envs["dispatcher"]["LATENTQ_METRICS_PORT"] == "9091"
    assert "LATENTQ_METRICS_PORT" not in envs["api"] and envs["api"]["OTHER"] == "x"
    assert metrics_ports({"OTHER": "x"})["dispatcher"] == {"OTHER": "x"}


def test_an_api_process_whose_metrics_port_another_holds_serves_on_without_it():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    app = FastAPI()
    app.state.metric_collectors = CollectorRegistry()
    settings = CommonSettings(metrics_port=taken.getsockname()[1], metrics_host="127.0.0.1")
    try:
        with metrics_port(settings, app):  # a warning, not a failed start-up
            pass
    finally:
        taken.close()
    port = free_port()
    with metrics_port(CommonSettings(metrics_port=port, metrics_host="127.0.0.1"), app):
        status, body = get(f"http://127.0.0.1:{port}/metrics")
        assert status == 200 and b"latentq_rate_limited_total" in body
    assert get_refused(f"http://127.0.0.1:{port}/metrics")  # stopped with the app


def get_refused(url: str) -> bool:
    try:
        urllib.request.urlopen(url, timeout=2)
    except urllib.error.URLError as error:
        return isinstance(error.reason, ConnectionRefusedError)
    return False


def test_queue_gauges_reach_redis_through_sentinel_when_it_is_configured():
    settings = CommonSettings(redis_sentinels=(f"127.0.0.1:{free_port()}",), redis_sentinel_master="latentq")
    stats = QueueStats.for_settings(settings, ["tiny-sd"])
    assert type(stats.redis.connection_pool).__name__ == "SentinelConnectionPool"
    started = time.monotonic()
    assert [family.name for family in stats.collect()] == ["latentq_queue_stats_up"]  # no sentinel answers
    assert time.monotonic() - started < 5


class FakeClock:
    """A monotonic clock the test moves by hand (seconds)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_utilisation_reports_the_busy_ratio_since_start_and_over_its_window_and_the_idle_gaps():
    clock = FakeClock()
    utilisation = Utilisation(window_s=60.0, clock=clock)
    idle_before = ROUND_IDLE._sum.get()
    # 60 s idle, then 30 rounds of 1 s sampling each after 1 s idle (the last one after 20 ms).
    clock.now += 60
    summaries = []
    for index in range(30):
        gap_s = 1.0 if index < 29 else 0.02
        started = clock.now + gap_s
        clock.now = started + 1.0
        summaries.append(utilisation.note_round(started, clock.now, gap_s * 1000))
    assert clock.now - 1000.0 == pytest.approx(119.02)
    assert utilisation.busy_ratio() == pytest.approx(30 / 119.02)
    # The last 60 s hold 30 s of sampling (the window clips the first round it overlaps).
    assert utilisation.busy_ratio(window=True) == pytest.approx(30 / 60, abs=0.02)
    summary = utilisation.summary()
    assert summary["idle_ms_median"] == 1000.0 and summary["idle_ms_p95"] == 1000.0
    assert summary["rounds"] == 30
    # One summary for the log per window: the first round ends 62 s after the start, the last 57 s later.
    assert [index for index, found in enumerate(summaries) if found is not None] == [0]
    assert ROUND_IDLE._sum.get() - idle_before == pytest.approx(29.02)
    # Idle a whole window: nothing in it.
    clock.now += 120
    assert utilisation.busy_ratio(window=True) == 0 and utilisation.summary()["rounds"] == 0
