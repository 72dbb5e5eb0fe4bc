"""Shared fixtures: real services on free ports, started once per session and always stopped."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn
from redis import Redis
from rq import Queue, Worker

from latentq.keys import queue_name
from latentq.settings import ApiSettings
from latentq_dev.devstack import (
    Process,
    RedisServer,
    S3Server,
    environment_without_settings,
    free_port,
    wait_until,
)

BUCKET = "latentq-test"
#: An upscale engine registered under Stability's example id: here, the Lanczos resampler.
ESRGAN = {"id": "esrgan-v1-x2plus", "name": "ESRGAN x2+ (Lanczos here)", "source": "builtin",
          "family": "resampler"}  # fmt: skip
API_KEY = "test-key-1"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    server = S3Server(tmp_path_factory.mktemp("s3")).start(BUCKET)
    yield server
    server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> Redis:
    return Redis.from_url(redis_server.url)


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the session's embedded models are built (``LATENTQ_EMBEDDED_MODEL_DIR`` of its workers)."""
    return tmp_path_factory.mktemp("models")


def embedded_model(models_dir: Path, name: str) -> Path:
    """Build embedded model ``name`` under ``models_dir`` (where the test workers look for it)."""
    from worker.embedded.models import build_tiny_model

    return build_tiny_model(models_dir / name, name)


@pytest.fixture(scope="session")
def tiny_model(models_dir: Path) -> Path:
    """The embedded SD 1.x model (``tiny-sd``), built once for the session."""
    return embedded_model(models_dir, "tiny-sd")


@pytest.fixture(scope="session")
def tiny_sdxl_model(models_dir: Path) -> Path:
    """The embedded SDXL model (``tiny-sdxl``)."""
    return embedded_model(models_dir, "tiny-sdxl")


@pytest.fixture(scope="session")
def tiny_inpainting_model(models_dir: Path) -> Path:
    """The embedded 9-channel inpainting model (``tiny-sd-inpainting``)."""
    return embedded_model(models_dir, "tiny-sd-inpainting")


@pytest.fixture(scope="session")
def tiny_upscaler_model(models_dir: Path) -> Path:
    """The embedded x4 upscaler (``tiny-x4-upscaler``)."""
    return embedded_model(models_dir, "tiny-x4-upscaler")


def service_env(redis_server: RedisServer, s3_server: S3Server, **settings: str) -> dict[str, str]:
    """Return an environment pointing a latentq process at the test services; its workers run on
    the CPU in fp32 unless ``settings`` say otherwise (``device``)."""
    env = environment_without_settings()
    env.update(s3_server.env(BUCKET))
    env["LATENTQ_REDIS_URL"] = redis_server.url
    # The pixel-equality references are plain diffusers on the CPU in fp32: on a CUDA host a worker
    # left on "auto" would sample fp16 on the GPU and differ (tests/integration/test_gpu*.py compare
    # the GPU's images with a stated tolerance).
    env["LATENTQ_DEVICE"] = "cpu"
    env.update({f"LATENTQ_{key.upper()}": value for key, value in settings.items()})
    return env


@contextmanager
def running_worker(env: dict[str, str], log_path: Path, model_id: str) -> Iterator[Process]:
    """Run ``python -m worker`` with ``env`` until it listens on ``model_id``'s queue, then stop it."""
    process = Process.start("worker", [sys.executable, "-m", "worker"], log_path, env)
    redis = Redis.from_url(env["LATENTQ_REDIS_URL"])
    queue = Queue(queue_name(model_id), connection=redis)
    try:
        wait_until(lambda: Worker.count(connection=redis, queue=queue) > 0, 120, "the worker", process)
        yield process
    finally:
        process.stop()


def worker_env(redis_server: RedisServer, s3_server: S3Server, models_dir: Path, model_id: str, **settings):
    """Return the environment of a worker serving ``model_id`` from the session's embedded models."""
    return service_env(
        redis_server, s3_server, embedded_model_dir=str(models_dir), worker_models=model_id,
        heartbeat_interval_s="1", progress_interval_s="0", webhook_progress_interval_s="0.1",
        worker_name=f"test-worker-{model_id.split(',')[0]}", **settings,
    )  # fmt: skip


@pytest.fixture(scope="session")
def worker(redis_server, s3_server, models_dir, tiny_model, tmp_path_factory) -> Iterator[Process]:
    """One worker serving ``tiny-sd`` (the default model), for the whole session."""
    env = worker_env(redis_server, s3_server, models_dir, "tiny-sd")
    with running_worker(env, tmp_path_factory.mktemp("logs") / "worker.log", "tiny-sd") as process:
        yield process


@pytest.fixture(scope="session")
def sdxl_worker(redis_server, s3_server, models_dir, tiny_sdxl_model, tmp_path_factory) -> Iterator[Process]:
    """A second worker, serving ``tiny-sdxl`` only, for the whole session."""
    env = worker_env(redis_server, s3_server, models_dir, "tiny-sdxl")
    with running_worker(env, tmp_path_factory.mktemp("logs") / "sdxl-worker.log", "tiny-sdxl") as process:
        yield process


@pytest.fixture(scope="session")
def image_worker(
    redis_server, s3_server, models_dir, tiny_inpainting_model, tiny_upscaler_model, tmp_path_factory
) -> Iterator[Process]:
    """A worker serving the inpainting checkpoint and the upscalers (one registered under Stability's
    ``esrgan-v1-x2plus`` through ``LATENTQ_MODELS``), for the whole session."""
    served = "tiny-sd-inpainting,tiny-x4-upscaler,lanczos,esrgan-v1-x2plus"
    env = worker_env(redis_server, s3_server, models_dir, served, models=json.dumps([ESRGAN]))
    log = tmp_path_factory.mktemp("logs") / "image-worker.log"
    with running_worker(env, log, "tiny-x4-upscaler") as process:
        yield process


def api_settings(redis_server: RedisServer, s3_server: S3Server, **overrides) -> ApiSettings:
    """Return API settings pointing at the test services (environment ignored)."""
    values = {
        "redis_url": redis_server.url,
        "s3_endpoint_url": s3_server.endpoint_url,
        "s3_bucket": BUCKET,
        "s3_access_key_id": s3_server.access_key,
        "s3_secret_access_key": s3_server.secret_key,
        "api_keys": (API_KEY, "test-key-2"),
    }
    values.update(overrides)
    return ApiSettings.model_validate(values)


@contextmanager
def serve(settings: ApiSettings) -> Iterator[str]:
    """Serve the API with ``settings`` over real HTTP on a free port; yield its base URL."""
    from api.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started, 20, "the API server")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


@contextmanager
def api_processes(
    env: dict[str, str], log_dir: Path, count: int = 1, verbose: bool = False
) -> Iterator[list[str]]:
    """Run ``count`` real API processes (uvicorn) with ``env``; yield their base URLs. ``verbose``:
    they log at INFO, with an access log."""
    processes, urls = [], []
    quiet = ["--no-access-log", "--log-level", "warning"]
    try:
        for index in range(count):
            port = free_port()
            argv = [sys.executable, "-m", "uvicorn", "api.app:create_app", "--factory", "--port", str(port),
                    *([] if verbose else quiet)]  # fmt: skip
            process = Process.start(f"api-{index}", argv, log_dir / f"api-{index}.log", env)
            processes.append(process)
            url = f"http://127.0.0.1:{port}"
            wait_until(lambda url=url: httpx.get(f"{url}/healthz").status_code == 200, 30, "the API", process)
            urls.append(url)
        yield urls
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="session")
def api_url(redis_server, s3_server) -> Iterator[str]:
    with serve(api_settings(redis_server, s3_server)) as url:
        yield url


@pytest.fixture
def client(api_url: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as c:
        yield c


def object_folder(client: httpx.Client, job_id: str) -> str:
    """Return the S3 folder of the objects of ``client``'s job ``job_id``: under its account's public id."""
    return f"{client.get('/v1/account').raise_for_status().json()['id']}/{job_id}"


def wait_for_job(client: httpx.Client, job_id: str, timeout_s: float = 60) -> dict:
    """Poll ``GET /v1/jobs/{id}`` until the job is terminal; return it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
        if job["status"] in ("succeeded", "failed", "canceled"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} did not finish within {timeout_s} s")
