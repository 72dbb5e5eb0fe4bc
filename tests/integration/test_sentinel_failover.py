"""A Redis Sentinel failover, with real processes: a master, two replicas and three sentinels on
loopback; the API, a worker and the dispatcher all reach Redis through the sentinels. A client
submits jobs steadily; the replicas are frozen for a second (what the master takes meanwhile
never reaches them), then the master is SIGKILLed; the sentinels promote a replica, and every
process carries on against it without restart, the writes of workers the master took with it
recovered through their leases. Every job answered 202 ends ``succeeded`` with its
image in S3 (once: outputs are idempotent) and its ``completed`` webhook; while no master answers,
submits are refused 503 (never 500). Two replicas: after the failover the new master still has
one, so the API's ``WAIT 1`` keeps being met."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass

import httpx
import pytest

from latentq_dev.sentinels import SentinelTopology
from tests.conftest import (
    API_KEY,
    BUCKET,
    api_processes,
    object_folder,
    running_worker,
    worker_env,
)
from tests.integration.webhook_harness import Dispatcher, Receiver

QUICK = {"prompt": "a lighthouse", "width": 64, "height": 64, "steps": 2}
#: Seconds between two submits, and how long the client submits before and after the kill.
SUBMIT_EVERY_S, BEFORE_S, AFTER_S = 0.1, 3.0, 7.0
#: Seconds the replicas are frozen before the master is killed: the writes it loses.
STALL_S = 1.0


@dataclass
class Answer:
    """One submit: when it was answered (``time.monotonic()``), its status (0: no HTTP answer) and
    its job or error."""

    at: float
    status: int
    body: dict


def submit_steadily(
    client: httpx.Client, receiver: Receiver, answers: list[Answer], stop: threading.Event
) -> None:
    """Submit a job every ``SUBMIT_EVERY_S`` until ``stop``, each with its own webhook path."""
    n = 0
    while not stop.wait(SUBMIT_EVERY_S) and n < 1000:
        n += 1
        try:
            response = client.post(
                "/v1/generate", json={**QUICK, "seed": n, "webhook_url": receiver.url(f"/j{n}")}
            )
            status, body = response.status_code, response.json()
        except httpx.HTTPError as error:
            status, body = 0, {"error": repr(error)}
        answers.append(Answer(time.monotonic(), status, body))


def final_states(client: httpx.Client, job_ids: list[str], timeout_s: float) -> dict[str, dict]:
    """Poll the jobs until each is terminal or ``timeout_s`` passed; return each one as the API
    shows it (``{"status": "missing"}``: the API no longer knows it)."""
    jobs = {job_id: {"status": "queued"} for job_id in job_ids}
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for job_id, job in jobs.items():
            if job["status"] in ("queued", "running"):
                response = client.get(f"/v1/jobs/{job_id}")
                jobs[job_id] = {"status": "missing"} if response.status_code == 404 else response.json()
        if all(job["status"] not in ("queued", "running") for job in jobs.values()):
            break
        time.sleep(0.2)
    return jobs


@pytest.mark.slow
def test_api_worker_and_dispatcher_carry_on_through_a_sentinel_failover(
    tmp_path, s3_server, models_dir, tiny_model
):
    started = time.monotonic()
    topology = SentinelTopology(tmp_path / "redis").start()
    sentinels = {
        "redis_sentinels": topology.addresses,
        "worker_lost_s": "4",
        "webhook_allowed_hosts": "127.0.0.1",
    }
    env = worker_env(topology.master, s3_server, models_dir, "tiny-sd", warmup="false", **sentinels)
    receiver = Receiver()
    dispatcher = Dispatcher({**env, "LATENTQ_WEBHOOK_RETRY_SCHEDULE_S": "1,1,1"}, tmp_path / "dispatcher.log")
    answers: list[Answer] = []
    stop = threading.Event()
    try:
        dispatcher.start()
        with (
            api_processes({**env, "LATENTQ_API_KEYS": API_KEY}, tmp_path) as (url,),
            httpx.Client(base_url=url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30) as client,
            running_worker(env, tmp_path / "worker.log", "tiny-sd") as worker,
        ):
            processes = [worker, dispatcher.process]
            client_thread = threading.Thread(
                target=submit_steadily, args=(client, receiver, answers, stop), daemon=True
            )
            client_thread.start()
            time.sleep(BEFORE_S)
            # The replicas miss the master's last writes, as with replication lag: what the master
            # answered meanwhile is lost with it, unless (submits) it waited for a replica.
            # A burst the worker is still running while the replicas are frozen: its writes (claims,
            # progress, outcomes) die with the master, and the jobs must be run again.
            burst = [
                client.post("/v1/generate", json={**QUICK, "steps": 10, "seed": 10_000 + n})
                for n in range(1, 9)
            ]
            assert all(response.status_code == 202 for response in burst), [r.text for r in burst]
            topology.stall_replicas(STALL_S)
            old_master = topology.kill_master()
            killed = time.monotonic()
            topology.resume_replicas()
            promoted = topology.wait_for_promotion(old_master, timeout_s=30)
            promoted_after_s = time.monotonic() - killed
            time.sleep(max(0.0, AFTER_S - (time.monotonic() - killed)))
            stop.set()
            client_thread.join(35)

            accepted = [answer.body["id"] for answer in answers if answer.status == 202]
            accepted += [response.json()["id"] for response in burst]
            refused = [answer for answer in answers if answer.status != 202]
            jobs = final_states(client, accepted, timeout_s=60)
            lost = [job_id for job_id, job in jobs.items() if job["status"] != "succeeded"]
            refusals = [answer.at - killed for answer in refused]
            report = {
                "submitted": len(answers),
                "accepted": len(accepted),
                "accepted_lost": len(lost),
                "run_again": sum(job.get("attempt", 1) > 1 for job in jobs.values()),
                "refused_503": len(refused),
                "503_window_s": round(max(refusals) - min(refusals), 2) if refusals else 0.0,
                "first_503_after_kill_s": round(min(refusals), 2) if refusals else None,
                "promoted_after_s": round(promoted_after_s, 2),
                "promoted_port": promoted.port,
            }
            print("sentinel failover:", json.dumps(report))

            assert not lost, {job_id: jobs[job_id] for job_id in lost}  # "missing": lost by the failover
            assert all(answer.status == 503 for answer in refused), [(a.status, a.body) for a in refused]
            assert all(answer.body["error"]["name"] == "service_unavailable" for answer in refused)
            # It carried on: submits after the promotion were accepted.
            assert any(
                answer.status == 202 and answer.at > killed + max(refusals, default=0) for answer in answers
            )
            assert len(accepted) > len(answers) / 2

            s3, account = s3_server.client(), object_folder(client, "").rstrip("/")
            for job_id in accepted:  # one image each: a job run twice overwrote its own key
                listed = s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{account}/{job_id}/")
                assert listed.get("KeyCount") == 1, (job_id, listed.get("Contents"))
            for n, answer in enumerate(answers, start=1):
                if answer.status == 202:  # each accepted job's completed webhook came (maybe twice)
                    sent = receiver.wait(f"/j{n}", 1, timeout_s=30)
                    assert any(b"job.completed" in request["body"] for request in sent), n
            assert all(process is not None and process.popen.poll() is None for process in processes)
        print(f"sentinel failover test: {time.monotonic() - started:.1f} s")
    finally:
        stop.set()
        dispatcher.stop()
        receiver.server.shutdown()
        topology.stop()
