"""The end of a run: wait until every accepted job is terminal and every webhook sent, then check
each ``202`` against the records, event streams, S3, RQ's lists and the receiver's log."""

from __future__ import annotations

import collections
import statistics
import time
from datetime import datetime

import httpx
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import StartedJobRegistry

from bench import KEY
from bench.chaos.clients import Outcome
from bench.chaos.faults import Faults
from bench.chaos.stack import BUCKET, TERMINAL, Stack, statuses
from bench.overhead import percentile
from latentq.keys import LEASES, job_events_key, queue_name

#: How long ``appendfsync everysec`` may hold back writing what Redis has answered: while a
#: background fsync is slow it postpones the AOF write up to 2 s, and a kill -9 loses those writes.
AOF_POSTPONE_S = 2.0
#: How long an answer Redis sent just before it died may take to reach the client as a 202.
REPLY_IN_FLIGHT_S = 0.5


def wait_until_settled(stack: Stack, outcome: Outcome, webhooks: dict[str, bool], deadline: float) -> None:
    """Wait until every accepted job is terminal (or has no record: reconciled as lost) and every
    terminal job with a webhook has its completed delivery, or until ``deadline``."""
    while time.monotonic() < deadline:
        ids = list(outcome.accepted)
        try:
            now = statuses(stack, ids)
        except RedisError:
            time.sleep(0.5)
            continue
        open_jobs = [
            job_id for job_id, status in zip(ids, now, strict=True) if status and status not in TERMINAL
        ]
        delivered = stack.receiver.completed()
        undelivered = [job_id for job_id, status in zip(ids, now, strict=True)
                       if webhooks.get(job_id) and status and job_id not in delivered]  # fmt: skip
        if not open_jobs and not undelivered:
            return
        time.sleep(0.5)


def reconcile(stack: Stack, outcome: Outcome, webhooks: dict[str, bool], faults: Faults) -> dict:
    """Check every accepted job against its record, events, objects, RQ's lists and the receiver."""
    aof_from = (faults.redis_killed_at or 0) - AOF_POSTPONE_S
    aof_to = (faults.redis_dead_at or faults.redis_killed_at or 0) + REPLY_IN_FLIGHT_S
    in_window = lambda job_id: aof_from <= outcome.accepted[job_id] <= aof_to  # noqa: E731
    statuses: collections.Counter = collections.Counter()
    errors: collections.Counter = collections.Counter()
    problems: dict[str, list[str]] = collections.defaultdict(list)
    finished_at: dict[str, float] = {}
    shown: set[str] = set()  # the object keys of the images succeeded jobs show
    delivered = stack.receiver.completed()
    queue = Queue(queue_name("tiny-sd"), connection=stack.redis)
    lists = [stack.redis.lrange(key, 0, -1) for key in (queue.key, queue.intermediate_queue_key)]
    in_rq = {*lists[0], *lists[1], *stack.redis.zrange(LEASES, 0, -1)}
    in_rq |= {job_id.encode() for job_id in StartedJobRegistry(queue=queue).get_job_ids()}
    headers = {"Authorization": f"Bearer {KEY}"}
    with httpx.Client(base_url=stack.base_url, headers=headers, timeout=30) as client:
        for job_id in outcome.accepted:
            response = client.get(f"/v1/jobs/{job_id}")
            if response.status_code == 404:
                problems["lost_aof_window" if in_window(job_id) else "lost"].append(job_id)
                continue
            if response.status_code != 200:
                problems["read_errors"].append(f"{job_id}: {response.status_code}")
                continue
            job = response.json()
            status = job["status"]
            statuses[status] += 1
            if status not in TERMINAL:
                problems["stuck"].append(job_id)
                continue
            if status == "failed":
                errors[job["error"]["name"]] += 1
            if job.get("finished_at"):
                finished_at[job_id] = datetime.fromisoformat(job["finished_at"]).timestamp()
            if status == "succeeded":
                # A presigned URL's path is /<bucket>/<object key>.
                shown.update(httpx.URL(image["url"]).path.split("/", 2)[2] for image in job["images"])
            ended = [fields[b"event"].decode() for _, fields in stack.redis.xrange(job_events_key(job_id))]
            if sum(name in TERMINAL for name in ended) != 1:
                problems["duplicated"].append(f"{job_id}: terminal events {ended}")
            if outcome.cancels.get(job_id) == "canceled" and status != "canceled":
                problems["duplicated"].append(f"{job_id}: cancel answered canceled, ended {status}")
            if webhooks.get(job_id):
                hooks = delivered.get(job_id, [])
                if not hooks:
                    problems["webhook_missing"].append(job_id)
                elif (
                    len({(hook["id"], hook["status"]) for hook in hooks}) > 1 or hooks[0]["status"] != status
                ):
                    problems["duplicated"].append(f"{job_id}: completed webhooks {hooks}")
            if job_id.encode() in in_rq:
                problems["left_in_rq"].append(job_id)
    s3 = stack.s3.client()
    objects = [item["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
               for item in page.get("Contents", [])]  # fmt: skip
    for key in objects:  # "<account>/<job id>/<index>.<ext>": one no succeeded job shows is an orphan
        if "/inputs/" not in key and key not in shown:
            problems["orphans"].append(key)
    to_terminal = [finished_at[job_id] - kill["at"] for kill in faults.kills for job_id in kill["jobs"]
                   if job_id in finished_at and finished_at[job_id] >= kill["at"]]  # fmt: skip
    redelivered = sum(len(hooks) - len({hook["id"] for hook in hooks}) for hooks in delivered.values())
    return {
        "accepted": len(outcome.accepted),
        **{status: statuses[status] for status in TERMINAL},
        "failed_by_error": dict(errors),
        "lost": len(problems["lost"]),
        "lost_aof_window": len(problems["lost_aof_window"]),
        "duplicated": len(problems["duplicated"]),
        "stuck": len(problems["stuck"]),
        "orphaned_objects": len(problems["orphans"]),
        "left_in_rq": len(problems["left_in_rq"]),
        "webhooks_expected": sum(1 for job_id in outcome.accepted if webhooks.get(job_id)),
        "webhooks_missing": len(problems["webhook_missing"]),
        "webhooks_redelivered_same_id": redelivered,
        "read_errors": len(problems["read_errors"]),
        "kill_to_terminal_s": {
            "jobs": len(to_terminal),
            "p50": round(statistics.median(to_terminal), 2) if to_terminal else None,
            "p99": round(percentile(to_terminal, 0.99), 2) if to_terminal else None,
        },
        "problems": {name: ids[:20] for name, ids in problems.items() if ids},
    }
