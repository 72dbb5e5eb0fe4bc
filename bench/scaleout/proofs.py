"""The proofs of a run: every accepted job ran exactly once, on a worker serving its model, and
left exactly the images it asked for.

What is counted, per accepted job:

- **RQ executions**: the entries of RQ's result stream of the job (``rq:results:<id>``). RQ appends
  one, with the worker's name and the execution's id, at the end of every ``perform_job`` of the
  job, success or failure, whichever worker ran it and however it took the job (RQ's dequeue, or
  a round's claim): a job run twice has two. Cross-checked with the sum of the workers' own
  counters (``successful_job_count`` + ``failed_job_count`` of each ``rq:worker:<name>``), which
  RQ increments once per execution, and which must equal the accepted jobs.
- **Record and events**: the record's ``attempt`` (1 unless a lost worker's job was run again) and
  the job's event stream: exactly one ``started`` and one terminal event.
- **Outputs**: the objects in S3 under the job's folder (``<account>/<job id>/<n>.png``), and the
  images its record lists, each equal to the ``samples`` it asked for; their sums equal the
  images the clients requested.
- **Routing**: each execution's worker serves the job's model, and RQ's job has the model's queue
  as its origin.
"""

from __future__ import annotations

import collections
import time
from typing import Any

from redis import Redis
from rq.results import Result
from rq.worker import Worker

from latentq.keys import job_events_key, job_key, queue_name, rq_job_key

TERMINAL = ("succeeded", "failed", "canceled")
#: Seconds to wait for RQ's end-of-execution bookkeeping of jobs whose end the clients already saw.
SETTLE_S = 60.0


def _job_facts(redis: Redis, job_ids: list[str]) -> list[dict[str, Any]]:
    """Read each job's record status and attempt, RQ origin, RQ results (their workers) and event
    names, in one round trip."""
    with redis.pipeline(transaction=False) as pipeline:
        for job_id in job_ids:
            pipeline.hmget(job_key(job_id), ["status", "attempt"])
            pipeline.hget(rq_job_key(job_id), "origin")
            pipeline.xrange(Result.get_key(job_id))
            pipeline.xrange(job_events_key(job_id))
        values = pipeline.execute()
    facts = []
    for index in range(len(job_ids)):
        (status, attempt), origin, results, events = values[4 * index : 4 * index + 4]
        facts.append({
            "status": status.decode() if status else None,
            "attempt": int(attempt or 0),
            "origin": origin.decode() if origin else None,
            "workers": [fields.get(b"worker_name", b"").decode() for _, fields in results],
            "events": [fields[b"event"].decode() for _, fields in events],
        })  # fmt: skip
    return facts


def settle(redis: Redis, job_ids: list[str], timeout_s: float = SETTLE_S) -> None:
    """Wait (``timeout_s`` at most) until every job has a terminal record and an RQ result."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        facts = _job_facts(redis, job_ids)
        if all(fact["status"] in TERMINAL and fact["workers"] for fact in facts):
            return
        time.sleep(0.2)


def worker_counters(redis: Redis, names: list[str]) -> int:
    """Return the executions RQ counted on the workers ``names`` (successes plus failures)."""
    total = 0
    for name in names:
        counts = redis.hmget(Worker.redis_worker_namespace_prefix + name,
                             ["successful_job_count", "failed_job_count"])  # fmt: skip
        total += sum(int(count or 0) for count in counts)
    return total


def objects_per_job(s3: Any, bucket: str) -> collections.Counter:
    """Return the number of output objects in ``bucket`` per job id (input images left out)."""
    counts: collections.Counter = collections.Counter()
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            parts = item["Key"].split("/")
            if len(parts) == 3 and parts[1] != "inputs":
                counts[parts[1]] += 1
    return counts


def check(
    redis: Redis,
    objects: collections.Counter,
    accepted: dict[str, tuple[str, int]],
    record_images: dict[str, int],
    served: dict[str, tuple[str, ...]],
) -> dict[str, Any]:
    """Check the accepted jobs (id -> (model, samples)) against Redis and the ``objects`` per job;
    ``record_images``: the images each job's final answer listed; ``served``: worker -> models."""
    job_ids = list(accepted)
    statuses: collections.Counter = collections.Counter()
    by_model: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    problems: dict[str, list[str]] = collections.defaultdict(list)
    executions = 0
    for job_id, fact in zip(job_ids, _job_facts(redis, job_ids), strict=True):
        model, samples = accepted[job_id]
        statuses[fact["status"] or "no record"] += 1
        executions += len(fact["workers"])
        by_model[model].update(fact["workers"])
        if len(fact["workers"]) > 1:
            problems["run_more_than_once"].append(f"{job_id}: {fact['workers']}")
        if not fact["workers"]:
            problems["never_run"].append(job_id)
        if fact["attempt"] != 1:
            problems["attempt_not_1"].append(f"{job_id}: {fact['attempt']}")
        if fact["events"].count("started") != 1 or sum(e in TERMINAL for e in fact["events"]) != 1:
            problems["events_not_once"].append(f"{job_id}: {fact['events']}")
        if objects.get(job_id, 0) != samples or record_images.get(job_id) != samples:
            problems["outputs_mismatch"].append(
                f"{job_id}: {samples} asked, {objects.get(job_id, 0)} objects, "
                f"{record_images.get(job_id)} in the record"
            )
        wrong = [name for name in fact["workers"] if model not in served.get(name, ())]
        if wrong or fact["origin"] != queue_name(model):
            problems["misrouted"].append(f"{job_id} ({model}): ran on {wrong}, origin {fact['origin']}")
    counters = worker_counters(redis, list(served))
    images_requested = sum(samples for _, samples in accepted.values())
    result = {
        "accepted": len(job_ids),
        "statuses": dict(statuses),
        "rq_executions": executions,
        "rq_worker_counters": counters,
        "jobs_run_more_than_once": len(problems["run_more_than_once"]),
        "jobs_never_run": len(problems["never_run"]),
        "attempts_not_1": len(problems["attempt_not_1"]),
        "events_not_once": len(problems["events_not_once"]),
        "images_requested": images_requested,
        "images_in_records": sum(record_images.get(job_id, 0) for job_id in job_ids),
        "objects_in_s3": sum(objects.get(job_id, 0) for job_id in job_ids),
        "outputs_mismatch": len(problems["outputs_mismatch"]),
        "misrouted": len(problems["misrouted"]),
        "executions_by_worker": dict(sorted(sum(by_model.values(), collections.Counter()).items())),
        "executions_by_model": {
            model: dict(sorted(counts.items())) for model, counts in sorted(by_model.items())
        },
    }
    result["ok"] = (
        0 < statuses["succeeded"] == len(job_ids) and executions == len(job_ids) == counters
        and not any(problems.values())
    )  # fmt: skip
    result["problems"] = {name: items[:10] for name, items in problems.items() if items}
    return result
