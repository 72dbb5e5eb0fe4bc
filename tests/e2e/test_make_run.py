"""The stack as ``make run`` starts it: ready, the printed curl example works, Ctrl-C stops it all."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

from latentq_dev.devstack import environment_without_settings, free_port
from tests.conftest import REPO, wait_for_job


def encoded_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def launch(state, models_dir, port: int) -> tuple[subprocess.Popen, list[str]]:
    """Start ``python -m latentq_dev.devrun`` (what ``make run`` runs) on ``state``; return it and its
    output up to the printed example, once it is ready."""
    env = environment_without_settings()
    env["LATENTQ_EMBEDDED_MODEL_DIR"] = str(models_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "latentq_dev.devrun", "--state", str(state), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    read_until(process, lines, lambda line: line.startswith("  curl") and "/v1/jobs/" in line)
    return process, lines


def read_until(process: subprocess.Popen, lines: list[str], found, timeout_s: float = 240) -> str:
    """Read the stack's output into ``lines`` until a line ``found`` accepts; return it."""
    deadline = time.monotonic() + timeout_s
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        assert line or process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        lines.append(line)
        if found(line):
            return line


def stop_anyway(process: subprocess.Popen) -> None:
    """Stop a stack a failed test left running, every process of it."""
    if process.poll() is None:
        children = children_of(process.pid)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for pid in [*children, process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def stack(tmp_path, models_dir, tiny_model, tiny_sdxl_model, tiny_inpainting_model, tiny_upscaler_model):
    port = free_port()
    process, lines = launch(tmp_path / "state", models_dir, port)
    yield process, lines, tmp_path / "state"
    stop_anyway(process)


def children_of(pid: int) -> list[int]:
    result = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(p) for p in result.stdout.split()]


@pytest.mark.slow
def test_make_run_serves_the_printed_example_and_stops_everything_on_ctrl_c(stack):
    process, lines, state = stack
    text = "".join(lines)
    key = re.search(r"export KEY=(\S+)", text).group(1)
    assert (state / "api_key").read_text().strip() == key
    submit = next(line for line in lines if "/v1/generate" in line).strip()
    output = subprocess.run(
        ["bash", "-c", submit], env={**os.environ, "KEY": key}, capture_output=True, text=True
    )
    job = json.loads(output.stdout)
    assert job["status"] == "queued"

    read = next(line for line in lines if "/v1/jobs/" in line).strip().replace("<id>", job["id"])
    deadline = time.monotonic() + 90  # a bound, not a target: the 64x64 job takes ~1 s unloaded
    while time.monotonic() < deadline:
        job = json.loads(subprocess.run(shlex.split(read.replace("$KEY", key)), capture_output=True).stdout)
        if job["status"] in ("succeeded", "failed", "canceled"):
            break
        time.sleep(0.1)
    assert job["status"] == "succeeded"
    generated = httpx.get(job["images"][0]["url"])
    assert generated.headers["content-type"] == "image/png"

    # The image jobs run on the same stack: redraw the image, repaint half of it, enlarge it.
    base_url = submit.split()[-1].removesuffix("/v1/generate")
    image = base64.b64encode(generated.content).decode()
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    bodies = {
        "/v1/generate": [{"prompt": "a storm", "init_image": image, "image_strength": 0.5},
                         {"prompt": "a storm", "init_image": image, "mask_source": "MASK_IMAGE_WHITE",
                          "mask_image": base64.b64encode(encoded_png(mask)).decode()}],
        "/v1/upscale": [{"model": "tiny-x4-upscaler", "image": image, "width": 128}, {"image": image}],
    }  # fmt: skip
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {key}"}, timeout=60) as client:
        for path, items in bodies.items():
            for body in items:
                response = client.post(path, json=body)
                assert response.status_code == 202, response.text
                assert wait_for_job(client, response.json()["id"])["status"] == "succeeded"

    servers = children_of(process.pid)
    assert len(servers) == 5  # redis, s3, worker, webhook dispatcher, api
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0
    assert all(not os.path.exists(f"/proc/{pid}") for pid in servers)


def command_line(pid: int) -> list[str]:
    with open(f"/proc/{pid}/cmdline", "rb") as file:
        return file.read().decode().split("\0")


@pytest.mark.slow
def test_make_run_restarts_a_crashed_worker_and_keeps_jobs_across_its_own_restart(stack, models_dir):
    process, lines, state = stack
    key = re.search(r"export KEY=(\S+)", "".join(lines)).group(1)
    base_url = next(line for line in lines if "/v1/generate" in line).split()[-1].removesuffix("/v1/generate")
    headers = {"Authorization": f"Bearer {key}"}
    [worker] = [pid for pid in children_of(process.pid) if command_line(pid)[1:3] == ["-m", "worker"]]
    os.kill(worker, signal.SIGKILL)
    read_until(process, lines, lambda line: line.startswith("worker exited with code -9; restarting"))
    with httpx.Client(base_url=base_url, headers=headers, timeout=60) as client:
        job_id = client.post("/v1/generate", json={"prompt": "a lighthouse", "steps": 2}).json()["id"]
        assert wait_for_job(client, job_id, timeout_s=120)["status"] == "succeeded"  # the new worker ran it
    process.send_signal(signal.SIGINT)
    assert process.wait(timeout=30) == 0

    port = free_port()
    again, _lines = launch(state, models_dir, port)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=headers, timeout=60) as client:
            job = client.get(f"/v1/jobs/{job_id}")
            assert job.status_code == 200 and job.json()["status"] == "succeeded"  # Redis kept it (AOF)
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(timeout=30) == 0


def test_make_run_refuses_models_it_cannot_serve_at_once_in_one_line(tmp_path):
    env = {
        **environment_without_settings(),
        "LATENTQ_WORKER_MODELS": "tiny-sdxl",
        "LATENTQ_DEFAULT_MODEL": "tiny-sd",
    }
    started = time.monotonic()
    run = subprocess.run([sys.executable, "-m", "latentq_dev.devrun", "--state", str(tmp_path / "state"),
                          "--port", str(free_port())], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=60)  # fmt: skip
    assert run.returncode == 2 and time.monotonic() - started < 30
    assert run.stderr.count("\n") == 1 and run.stderr.startswith("make run: LATENTQ_DEFAULT_MODEL=tiny-sd")
    assert not (tmp_path / "state" / "redis").exists()  # nothing was started
