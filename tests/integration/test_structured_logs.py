"""Structured logs and request ids across processes: a real API process (uvicorn, access log on), the
session's real worker and a real dispatcher log JSON lines, and the request id a client sends
is echoed, kept with its job, and on the worker's and the dispatcher's lines about that job."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from api.app import create_app
from latentq_dev.devstack import wait_until
from tests.conftest import API_KEY, api_processes, api_settings, service_env, wait_for_job

BODY = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 4, "seed": 3}
GENERATED = re.compile(r"[0-9a-f]{32}")


@pytest.fixture(scope="module")
def json_api(redis_server, s3_server, tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """A real API process logging JSON (the default), access log on; yields its URL and its log."""
    env = service_env(redis_server, s3_server, api_keys=API_KEY, webhook_allowed_hosts="127.0.0.1")
    logs = Path(tmp_path_factory.mktemp("logs"))
    with api_processes(env, logs, verbose=True) as [url]:
        yield url, logs / "api-0.log"


def keyed(url: str) -> httpx.Client:
    return httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)


def json_lines(path: Path) -> list[dict]:
    """Every line of the log at ``path``, each of which must be one JSON object."""
    lines = path.read_text().splitlines()
    assert lines, f"{path} is empty"
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line in {path.name}: {line!r}")
    assert all({"timestamp", "level", "process", "logger", "event"} <= set(item) for item in parsed)
    return parsed


def test_a_jobs_request_id_runs_through_the_api_worker_and_dispatcher_logs(
    json_api, worker, dispatcher, receiver
):
    url, api_log = json_api
    request_id = "client-trace-7f3a:1"
    body = {**BODY, "webhook_url": receiver.url("/logged")}
    with keyed(url) as client:
        answer = client.post("/v1/generate", json=body, headers={"X-Request-Id": request_id})
        assert answer.status_code == 202 and answer.headers["x-request-id"] == request_id
        job_id = answer.json()["id"]
        assert answer.json()["request_id"] == request_id and "request_id" not in answer.json()["request"]
        job = wait_for_job(client, job_id)
        assert job["status"] == "succeeded" and job["request_id"] == request_id
        account = client.get("/v1/account").json()["id"]
    receiver.wait("/logged", 1)

    # The API: its access line for the submit carries the request id and the account.
    submits = [line for line in json_lines(api_log) if line.get("request_id") == request_id]
    access = [line for line in submits if line["logger"] == "uvicorn.access"]
    parts = [(line["method"], line["path"], line["status"]) for line in access]
    assert parts == [("POST", "/v1/generate", 202)]
    assert access[0]["process"] == "api" and access[0]["account"] == account

    # The worker: its lines about the job carry the job, its account and the request id.
    worker_lines = json_lines(worker.log_path)
    assert {line["process"] for line in worker_lines} == {"worker"}
    about = [line for line in worker_lines if line.get("job_id") == job_id]
    assert about and all(line["request_id"] == request_id and line["account"] == account for line in about)
    assert any(f"job {job_id} succeeded" in line["event"] for line in about)
    assert any(line["logger"].startswith("rq.") for line in about)  # RQ's own lines about it too
    [round_line] = [line for line in worker_lines if job_id in line.get("job_ids", [])]
    assert round_line["batch_size"] >= 1 and round_line["idle_ms"] >= 0 and round_line["sampling_ms"] > 0

    # The dispatcher: its lines about the delivery carry them too, RQ's own included (logged last).
    def rq_line_logged() -> bool:
        lines = json_lines(dispatcher.log_path)
        return any(line.get("job_id") == job_id and line["logger"].startswith("rq.") for line in lines)

    wait_until(rq_line_logged, 10, "the dispatcher's lines")
    delivered = [line for line in json_lines(dispatcher.log_path) if line.get("job_id") == job_id]
    assert all(line["request_id"] == request_id and line["process"] == "dispatcher" for line in delivered)
    assert any("completed" in line["event"] and "delivered" in line["event"] for line in delivered)
    assert not [line for line in json_lines(api_log) if "color_message" in line]  # uvicorn's ANSI copy


@pytest.mark.parametrize("sent", [None, "has space", "x" * 129, "semi;colon", "ünï"])
def test_a_missing_or_unsafe_request_id_is_replaced_by_a_new_one(json_api, sent):
    url, api_log = json_api
    headers = {"X-Request-Id": sent.encode()} if sent is not None else {}  # raw UTF-8 bytes
    with keyed(url) as client:
        answer = client.post("/v1/generate", json=BODY, headers=headers)
        made = answer.headers["x-request-id"]
        assert answer.status_code == 202 and made != sent and GENERATED.fullmatch(made)
        assert client.get(f"/v1/jobs/{answer.json()['id']}").json()["request_id"] == made
    wait_until(lambda: any(line.get("request_id") == made for line in json_lines(api_log)), 5, "the line")


def test_every_answer_says_its_request_id(json_api):
    url, _ = json_api
    stability = "/v1/generation/tiny-sd/text-to-image"
    with keyed(url) as client:
        answers = [
            client.get("/healthz"),
            client.get("/no/such/route"),  # 404
            client.get("/v1/jobs/no-such-job"),  # our 404
            client.post("/v1/generate", json={"steps": "ten"}),  # a validation error
            httpx.post(f"{url}/v1/generate", json=BODY),  # no key: refused by the request guard
            client.post(stability, json={"text_prompts": []}),  # Stability's error shape
            client.post("/v1/images/generations", json={}),  # OpenAI's
        ]
    assert [answer.status_code for answer in answers] == [200, 404, 404, 400, 401, 400, 400]
    assert all(GENERATED.fullmatch(answer.headers.get("x-request-id", "")) for answer in answers)
    with keyed(url) as client:
        mine = client.get("/no/such/route", headers={"X-Request-Id": "mine"})
    assert mine.headers["x-request-id"] == "mine"


def test_an_unhandled_error_answers_500_with_the_request_id(redis_server, s3_server):
    app: FastAPI = create_app(api_settings(redis_server, s3_server))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    with TestClient(app, raise_server_exceptions=False) as client:
        answer = client.get("/boom", headers={"X-Request-Id": "trace-500"})
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "trace-500"
    assert answer.json()["error"]["name"] == "internal_error"


def test_the_text_format_writes_lines_for_people(redis_server, s3_server, tmp_path):
    env = service_env(redis_server, s3_server, api_keys=API_KEY, log_format="text")
    with api_processes(env, tmp_path, verbose=True) as [url], keyed(url) as client:
        client.get("/v1/models", headers={"X-Request-Id": "text-format-1"}).raise_for_status()
    lines = (tmp_path / "api-0.log").read_text().splitlines()
    assert not any(line.startswith("{") for line in lines), lines[:5]
    [access] = [line for line in lines if "request_id=text-format-1" in line]
    assert " INFO uvicorn.access: " in access and "GET /v1/models HTTP/1.1" in access
