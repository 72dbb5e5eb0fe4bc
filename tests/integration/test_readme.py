"""The README's examples run as written: its shell walk-through against the test stack, with
``localhost:8000`` the test API's address and ``.run/api_key`` its key, as in a checkout that
``make run`` serves."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import subprocess
from pathlib import Path

from PIL import Image

from tests.conftest import API_KEY, REPO

README = REPO / "README.md"
#: A fenced block of the given language: its text.
FENCE = r"```{language}\n(.*?)```"


def section(title: str, until: str) -> str:
    """Return the README's text from heading ``title`` up to heading ``until``."""
    text = "\n" + README.read_text()
    start = text.index(f"\n{title}\n")
    return text[start : text.index(f"\n{until}\n", start)]


def blocks(text: str, language: str) -> list[str]:
    """Return the fenced ``language`` blocks of ``text``, in order."""
    return re.findall(FENCE.format(language=re.escape(language)), text, flags=re.DOTALL)


def json_documents(output: str) -> list[dict]:
    """Return the JSON objects printed one after another (curl adds no newline between them)."""
    decoder, documents, index = json.JSONDecoder(), [], 0
    while (start := output.find("{", index)) >= 0:
        document, index = decoder.raw_decode(output, start)
        documents.append(document)
    return documents


def checkout(tmp_path: Path) -> Path:
    """Return a folder that looks like a served checkout: ``.run/api_key`` and ``.venv``."""
    (tmp_path / ".run").mkdir()
    (tmp_path / ".run" / "api_key").write_text(API_KEY + "\n")
    (tmp_path / ".venv").symlink_to(REPO / ".venv")
    return tmp_path


def size_of(path: Path) -> tuple[int, int]:
    image = Image.open(io.BytesIO(path.read_bytes()))
    assert image.format == "PNG", path
    return image.size


def test_the_shell_walk_through_runs_as_written(api_url, worker, image_worker, tmp_path):
    script = "\n".join(blocks(section("## Walk-through", "## API"), "sh"))
    assert script.count("curl") >= 10
    script = "set -euo pipefail\n" + script.replace("localhost:8000", api_url.removeprefix("http://"))
    folder = checkout(tmp_path)
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATENTQ_")}
    run = subprocess.run(["bash", "-c", script], cwd=folder, env=env, capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    documents = json_documents(run.stdout)
    # The submit (queued), the read, then image-to-image, masking and upscale, each waited for.
    assert len(documents) == 5, run.stdout
    assert documents[0]["status"] == "queued" and documents[1]["id"] == documents[0]["id"]
    for job in documents[2:]:
        assert job["status"] == "succeeded" and job["error"] is None, job
    assert [job["request"]["task"] for job in documents[2:]] == ["image-to-image", "masking", "upscale"]
    sizes = {name: size_of(folder / name) for name in
             ("lighthouse.png", "out.png", "redrawn.png", "repainted.png", "big.png")}  # fmt: skip
    assert sizes == {"lighthouse.png": (64, 64), "out.png": (128, 128), "redrawn.png": (64, 64),
                     "repainted.png": (64, 64), "big.png": (128, 128)}  # fmt: skip
    assert size_of(folder / "mask.png") == (64, 64)
    # The event stream's example, for the first job (long finished: its stream ends).
    (follow,) = blocks(section("### `GET /v1/jobs/{id}/events` (Server-Sent Events)", "### Live preview: "
                               '`"preview": true`'), "sh")  # fmt: skip
    follow = follow.replace("localhost:8000", api_url.removeprefix("http://"))
    env |= {"KEY": API_KEY, "JOB": documents[0]["id"]}
    events = subprocess.run(["bash", "-c", follow], cwd=folder, env=env, capture_output=True, text=True,
                            timeout=60)  # fmt: skip
    assert events.returncode == 0, events.stderr
    names = re.findall(r"^event: (\w+)$", events.stdout, flags=re.MULTILINE)
    assert names[0] == "queued" and names[-1] == "succeeded", events.stdout


def run_python(code: str, api_url: str) -> dict:
    """Run README Python ``code`` with ``http://127.0.0.1:8000`` and ``localhost:8000`` meaning the
    test API; return its globals."""
    code = code.replace("http://127.0.0.1:8000", api_url).replace("http://localhost:8000", api_url)
    namespace: dict = {"__name__": "readme"}
    exec(compile(code, str(README), "exec"), namespace)
    return namespace


def test_the_openai_example_runs_as_written(api_url, worker, monkeypatch):
    monkeypatch.setenv("KEY", API_KEY)
    (code,) = blocks(section("### OpenAI Images API", "### `GET /v1/jobs/{id}`"), "python")
    result = run_python(code, api_url)["result"]
    assert [Image.open(io.BytesIO(base64.b64decode(item.b64_json))).size for item in result.data] == [
        (128, 128),
        (128, 128),
    ]


def test_the_integration_guides_python_runs_as_written(api_url, worker, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from dispatcher.signing import signature_headers

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATENTQ_API_KEY", API_KEY)
    *clients, receiver = blocks(section("## Integration guide", "## Configuration"), "python")
    assert len(clients) == 4
    namespace = run_python("\n".join(clients), api_url)
    assert namespace["job"].status == "succeeded"
    assert len(list((tmp_path / "out").glob("*.png"))) == 2  # waited for, then followed by events
    assert Image.open(tmp_path / "preview.jpg").format == "JPEG"
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    monkeypatch.setenv("LATENTQ_WEBHOOK_SECRET", secret)
    hooks = TestClient(run_python(receiver, api_url)["app"])
    body = json.dumps({"type": "job.completed", "data": {"status": "succeeded", "images": []}}).encode()
    headers = signature_headers([secret], "msg_job_completed", body)
    assert hooks.post("/hooks/latentq", content=body, headers=headers).status_code == 200
    assert hooks.post("/hooks/latentq", content=body, headers=headers).status_code == 200  # a retry
    assert hooks.post("/hooks/latentq", content=body + b" ", headers=headers).status_code == 400


def test_the_command_line_example_runs_as_written(api_url, worker, image_worker, tmp_path):
    (script,) = blocks(section("## Integration guide", "## Configuration"), "sh")
    script = "set -euo pipefail\n" + script.replace("localhost:8000", api_url.removeprefix("http://"))
    env = {key: value for key, value in os.environ.items() if not key.startswith("LATENTQ_")}
    run = subprocess.run(["bash", "-c", script], cwd=checkout(tmp_path), env=env, capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    sizes = sorted(Image.open(path).size for path in (tmp_path / "out").iterdir())
    assert sizes == [(128, 128), (128, 128), (256, 256)]  # generated, redrawn, upscaled
    assert "tiny-sd" in run.stdout  # the models listed


def test_the_opening_example_runs_as_written(api_url, worker, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LATENTQ_API_KEY", API_KEY)
    (code,) = blocks(section("# latentq", "## Two commands"), "python")
    assert len([line for line in code.splitlines() if line.strip()]) == 3
    run_python(code, api_url)
    (image,) = (tmp_path / "out").iterdir()
    assert Image.open(image).size == (64, 64)  # the default model's default size
