"""The ``latentq`` command line, run as a real subprocess (the console script and ``python -m
latentq_client.cli``) against the real test stack, configured by ``LATENTQ_URL``/``LATENTQ_API_KEY``."""

from __future__ import annotations

import io
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from latentq_client import Client
from tests.conftest import API_KEY

#: The console script ``make install`` puts beside the interpreter.
CONSOLE_SCRIPT = Path(sys.executable).parent / "latentq"


def latentq(api_url: str, *args: str, module: bool = False, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``latentq *args`` against ``api_url`` (its console script, or ``python -m`` with ``module``)."""
    command = [sys.executable, "-m", "latentq_client.cli"] if module else [str(CONSOLE_SCRIPT)]
    environment = {**os.environ, "LATENTQ_URL": api_url, "LATENTQ_API_KEY": API_KEY, **env}
    return subprocess.run(
        [*command, *args], env=environment, capture_output=True, text=True, timeout=120, check=False
    )


def test_generate_writes_the_images_and_reports_progress(api_url, worker, tmp_path):
    result = latentq(
        api_url, "generate", "a lighthouse", "--size", "64x64", "--steps", "5", "--seed", "42",
        "--samples", "2", "-o", str(tmp_path / "out"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    paths = [Path(line) for line in result.stdout.split()]
    assert len(paths) == 2 and all(path.parent == tmp_path / "out" for path in paths)
    assert [Image.open(path).size for path in paths] == [(64, 64), (64, 64)]
    assert "step 1/5" in result.stderr and "step 5/5" in result.stderr and "succeeded" in result.stderr


def test_generate_with_preview_reports_the_previews_as_text_off_a_terminal(api_url, worker, tmp_path):
    result = latentq(api_url, "generate", "a boat", "--steps", "5", "--size", "64x64", "--preview", "-o",
                     str(tmp_path), module=True)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "preview at step 5" in result.stderr and len(list(tmp_path.iterdir())) == 1


def test_img2img_and_upscale_take_image_files(api_url, worker, image_worker, tmp_path):
    init = tmp_path / "init.png"
    Image.new("RGB", (72, 64), (30, 90, 160)).save(init)
    redrawn = latentq(api_url, "img2img", "a storm", str(init), "--strength", "0.4", "--steps", "4",
                      "-o", str(tmp_path / "redrawn"))  # fmt: skip
    assert redrawn.returncode == 0, redrawn.stderr
    assert Image.open(redrawn.stdout.strip()).size == (72, 64)
    upscaled = latentq(api_url, "upscale", str(init), "--model", "lanczos", "--width", "144", "-o",
                       str(tmp_path / "big"))  # fmt: skip
    assert upscaled.returncode == 0, upscaled.stderr
    assert Image.open(upscaled.stdout.strip()).size == (144, 128)


def test_jobs_models_and_cancel(api_url, worker):
    with Client(api_url, API_KEY) as client:
        job = client.generate("a lighthouse", width=128, height=128, steps=150)
        finished = client.generate("a lighthouse", width=64, height=64, steps=2)
    canceled = latentq(api_url, "cancel", job.id)
    assert canceled.returncode == 0 and canceled.stdout.split() == [job.id, "canceled"], canceled.stderr
    listed = latentq(api_url, "jobs", "--status", "canceled", "--limit", "100")
    assert listed.returncode == 0 and job.id in listed.stdout and finished.id not in listed.stdout
    first = latentq(api_url, "jobs", "--limit", "1")
    cursor = re.search(r"latentq jobs --cursor (\S+)\)", first.stderr)
    assert first.returncode == 0 and cursor, first.stderr
    second = latentq(api_url, "jobs", "--limit", "1", "--cursor", cursor[1])
    assert second.returncode == 0 and second.stdout and second.stdout != first.stdout  # the next job
    models = latentq(api_url, "models")
    assert models.returncode == 0 and any(
        line.startswith("tiny-sd ") and "workers=1" in line for line in models.stdout.splitlines()
    ), models.stdout
    again = latentq(api_url, "cancel", job.id)
    assert again.returncode == 1 and "job_finished" in again.stderr


@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("generate", "a lighthouse", "--size", "65x64"), "invalid_width"),
        (("cancel", "0b4f3c1e-0000-4000-8000-000000000000"), "not_found"),
    ],
)
def test_an_api_error_prints_its_name_and_exits_non_zero(api_url, args, name):
    result = latentq(api_url, *args)
    assert result.returncode == 1 and f"error: {name}:" in result.stderr, result.stderr
    assert result.stdout == ""


def test_a_bad_key_from_a_flag_is_refused(api_url):
    result = latentq(api_url, "--api-key", "wrong-key", "models")
    assert result.returncode == 1 and "error: unauthorized:" in result.stderr


def test_no_key_is_an_error_before_any_request(api_url):
    result = latentq(api_url, "models", LATENTQ_API_KEY="")
    assert result.returncode == 1 and "missing_api_key" in result.stderr


def test_a_jpeg_job_is_saved_as_a_jpg_file_named_after_the_job(api_url, worker, tmp_path):
    result = latentq(api_url, "generate", "a lighthouse", "--size", "64x64", "--steps", "2",
                     "--format", "jpeg", "-o", str(tmp_path))  # fmt: skip
    assert result.returncode == 0, result.stderr
    [path] = [Path(line) for line in result.stdout.split()]
    assert path.suffix == ".jpg" and path.stem.endswith("-0")
    assert Image.open(io.BytesIO(path.read_bytes())).format == "JPEG"


def run_in_terminal(api_url: str, *args: str, **env: str) -> tuple[int, str]:
    """Run ``latentq *args`` in a pseudo-terminal; return its exit status and everything it wrote."""
    leader, follower = pty.openpty()
    environment = {**os.environ, "LATENTQ_URL": api_url, "LATENTQ_API_KEY": API_KEY, "TERM": "xterm", **env}
    process = subprocess.Popen(
        [str(CONSOLE_SCRIPT), *args], stdout=follower, stderr=follower, env=environment
    )
    os.close(follower)
    output = bytearray()
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has ended
            break
        if not chunk:
            break
        output += chunk
    os.close(leader)
    return process.wait(30), output.decode(errors="replace")


def test_on_a_terminal_a_bar_shows_progress_and_iterm2_shows_previews_inline(api_url, worker, tmp_path):
    args = ("generate", "a lighthouse", "--size", "64x64", "--steps", "10", "--preview", "-o", str(tmp_path))
    status, output = run_in_terminal(api_url, *args, TERM_PROGRAM="iTerm.app")
    assert status == 0, output
    assert "10/10" in output and "\x1b]1337;File=inline=1;" in output and len(list(tmp_path.iterdir())) == 1
    status, plain = run_in_terminal(api_url, *args, TERM_PROGRAM="Apple_Terminal")
    assert status == 0 and "10/10" in plain and "1337;File" not in plain


def test_a_missing_local_file_is_an_error_not_a_traceback(api_url, tmp_path):
    result = latentq(api_url, "img2img", "a lighthouse", str(tmp_path / "missing.png"))
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "missing.png" in result.stderr
