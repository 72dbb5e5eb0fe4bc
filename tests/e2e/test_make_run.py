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


@pytest.fixture
def stack(tmp_path, models_dir, tiny_model, tiny_sdxl_model, tiny_inpainting_model, tiny_upscaler_model):
    port = free_port()
    env = environment_without_settings()
    env["LATENTQ_EMBEDDED_MODEL_DIR"] = str(models_dir)
    process = subprocess.Popen(
        [sys.executable, "-m", "latentq_dev.devrun", "--state", str(tmp_path / "state"), "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    lines: list[str] = []
    deadline = time.monotonic() + 240
    assert process.stdout is not None
    while not any(line.startswith("  curl") and "/v1/jobs/" in line for line in lines):
        line = process.stdout.readline()
        assert line or process.poll() is None, "".join(lines)
        assert time.monotonic() < deadline, "".join(lines)
        lines.append(line)
    yield process, lines, tmp_path / "state"
    if process.poll() is None:  # the test failed before stopping it: stop the whole stack anyway
        children = children_of(process.pid)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            for pid in [*children, process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


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
    for _ in range(200):
        job = json.loads(subprocess.run(shlex.split(read.replace("$KEY", key)), capture_output=True).stdout)
        if job["status"] == "succeeded":
            break
        time.sleep(0.05)
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
