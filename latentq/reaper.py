"""The reaper: finds jobs whose lease expired (``latentq.leases``: their worker was lost) and
recovers each, once, whichever live process's reaper gets there first (each worker and each
webhook dispatcher runs one). A webhook delivery whose dispatcher died mid-attempt goes back to
the front of its queue and is sent again with the same ``webhook-id``.

A job that was running goes back to the front of its queue with ``attempt`` + 1 (the same object
keys: a re-run overwrites, never duplicates), up to ``LATENTQ_MAX_ATTEMPTS`` runs; after that it
ends ``failed`` / ``worker_lost`` (so a job that kills its worker every time is not retried
forever). A job that was claimed but had not started goes back without counting an attempt. A job
that ends other than ``succeeded`` (failed here, or canceled while its worker was lost) shows no
images: those its lost runs may have stored are deleted. Each recovery is one guarded script call:
it runs only while the lease is still expired and the job has not ended, so two reapers never both
recover a job, and a worker that renews in time keeps it. RQ's own lists and registries (queue,
intermediate queue, started and failed registries) are updated in the same call, so ``rq info``
tells the same story.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import suppress
from typing import Any

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.registry import FailedJobRegistry, StartedJobRegistry
from rq.worker import BaseWorker

from latentq.command_batch import CommandBatch
from latentq.contract import JobError, JobSpec, JobStatus
from latentq.errors import ERRORS
from latentq.keys import LEASE_HOLDERS, LEASES, WEBHOOK_QUEUE, image_object_keys, job_key, rq_job_key
from latentq.leases import Leases
from latentq.periodic import Periodic
from latentq.records import JobRecords, utc_now
from latentq.storage import STORAGE_ERRORS
from latentq.transitions import record_change

log = logging.getLogger("latentq.worker")

#: The field of a delivery's RQ job counting the dispatchers lost while sending it.
LOST_FIELD = "latentq_lost"
#: Expired leases recovered per pass, at most.
PASS_LIMIT = 100
#: Queued jobs that are in RQ's intermediate queues get a lease once seen there: queues looked at.
QUEUE_PREFIX = Queue.redis_queue_namespace_prefix + "latentq:"
DELIVERY_QUEUE_KEY = Queue.redis_queue_namespace_prefix + WEBHOOK_QUEUE


class Reaper:
    """Recovers the jobs of lost workers every ``interval_s`` seconds, on a daemon thread;
    ``delete_objects`` (the image store's ``delete``) removes the images of a job that did not succeed."""

    def __init__(
        self,
        records: JobRecords,
        leases: Leases,
        max_attempts: int,
        interval_s: float,
        delete_objects: Callable[[list[str]], None] | None = None,
        each_pass: Callable[[], None] | None = None,
    ) -> None:
        self.records, self.leases = records, leases
        self.delete_objects = delete_objects
        #: Also done every pass (a worker's: top its queues up from the accounts' waiting jobs).
        self.each_pass = each_pass
        self.redis: Redis = records.redis
        self.max_attempts = max_attempts
        self._passes = Periodic(
            self.run_once,
            interval_s,
            lambda error: log.warning("reaper: %s; retrying", error),
            "latentq-reaper",
        )

    def start(self) -> Reaper:
        """Run one pass now (before the process takes jobs), then keep passing in the background."""
        self.run_once()
        self._passes.start()
        return self

    def stop(self) -> None:
        """Stop passing."""
        self._passes.stop()

    def run_once(self) -> dict[str, int]:
        """Adopt jobs left in RQ's intermediate queues without a lease, then recover every job whose
        lease expired; return how many were requeued, failed, or found already ended."""
        self.leases.adopt(self._unleased_intermediate())
        counts = {"requeued": 0, "failed": 0, "ended": 0}
        for job_id in self.leases.expired(PASS_LIMIT):
            try:
                outcome = self.recover(job_id)
            except RedisError:
                raise
            except Exception:  # a record it cannot read must not stop the others' recovery
                log.exception("reaper: could not recover job %s", job_id)
                continue
            if outcome:
                counts[outcome] += 1
        if self.each_pass is not None:
            self.each_pass()
        return counts

    def _unleased_intermediate(self) -> list[str]:
        queues: Any = self.redis.smembers(Queue.redis_queues_keys)
        found = []
        for key in sorted(queue.decode() for queue in queues):
            if key.startswith(QUEUE_PREFIX) or key == DELIVERY_QUEUE_KEY:
                waiting: Any = self.redis.lrange(f"{key}:intermediate", 0, -1)
                found += [job_id.decode() for job_id in waiting]
        if not found:
            return []
        scores = self.redis.zmscore(LEASES, found)
        return [job_id for job_id, score in zip(found, scores, strict=True) if score is None]

    def recover(self, job_id: str) -> str | None:
        """Recover ``job_id``, whose lease expired; return ``requeued``, ``failed`` or ``ended``, or
        None if it needed nothing (another reaper got there first, or its worker renewed)."""
        fields: Any = self.redis.hmget(job_key(job_id), ["status", "attempt", "spec"])
        status_value, attempt, spec_json = fields
        status = status_value.decode() if status_value else None
        origin_value: Any = self.redis.hget(rq_job_key(job_id), "origin")
        origin = origin_value.decode() if origin_value else None
        batch = CommandBatch().require_due(LEASES, job_id)
        batch.pipeline.zrem(LEASES, job_id)
        batch.pipeline.hdel(LEASE_HOLDERS, job_id)
        if origin is not None:
            self._leave_rq_lists(batch, job_id, origin)
        if origin == WEBHOOK_QUEUE:
            return self._redeliver(batch, job_id)
        if status is None or spec_json is None:
            return "ended" if batch.run(self.redis) else None
        spec = JobSpec.model_validate_json(spec_json)
        if JobStatus(status).is_terminal:  # it ended while its worker held it, lost since
            if not batch.run(self.redis):
                return None
            if status != JobStatus.SUCCEEDED.value:  # e.g. canceled while its lost run uploaded
                self._delete_images(spec)
            return "ended"
        ran = int(attempt or 1)
        was_running = status == JobStatus.RUNNING.value
        if origin is None or (was_running and ran >= self.max_attempts):  # no RQ job: nothing to rerun
            return "failed" if self._fail(batch, spec, origin, ran) else None
        self._requeue(batch, spec, origin, ran + 1 if was_running else ran)
        if batch.run(self.redis):
            log.warning("job %s: its worker was lost; back in its queue (attempt %d)", job_id, ran + 1)
            return "requeued"
        return None

    def _redeliver(self, batch: CommandBatch, job_id: str) -> str | None:
        """A webhook delivery whose dispatcher died mid-attempt: back to the front of its queue, to
        be sent again with the same ``webhook-id`` (at most ``max_attempts`` times in all)."""
        rq_key = rq_job_key(job_id)
        lost_value: Any = self.redis.hget(rq_key, LOST_FIELD)
        lost = int(lost_value or 0) + 1
        batch.require_in(rq_key, "status", ["started", "queued"])
        if lost >= self.max_attempts:  # it takes its dispatcher down every time: give it up
            seconds, _ = self.redis.time()
            failed = FailedJobRegistry(WEBHOOK_QUEUE, connection=self.redis).key
            batch.pipeline.hset(rq_key, mapping={"status": "failed", "ended_at": utc_now()})
            batch.pipeline.zadd(failed, {job_id: seconds + self.records.max_retention_s})
            return "failed" if batch.run(self.redis) else None
        queue = Queue(WEBHOOK_QUEUE, connection=self.redis)
        batch.pipeline.hset(rq_key, mapping={"status": "queued", "worker_name": "", LOST_FIELD: lost})
        batch.pipeline.lpush(queue.key, job_id)
        if batch.run(self.redis):
            log.warning("delivery %s: its dispatcher was lost; back in its queue", job_id)
            return "requeued"
        return None

    def _leave_rq_lists(self, batch: CommandBatch, job_id: str, origin: str) -> None:
        """Add to ``batch`` the removal of ``job_id`` from RQ's lists of queue ``origin``."""
        queue = Queue(origin, connection=self.redis)
        batch.pipeline.lrem(queue.intermediate_queue_key, 0, job_id)
        batch.pipeline.lrem(queue.key, 0, job_id)
        started = StartedJobRegistry(origin, connection=self.redis).key
        members: Any = self.redis.zrange(started, 0, -1)
        executions = [member for member in members if member.decode().split(":")[0] == job_id]
        if executions:
            batch.pipeline.zrem(started, *executions)

    def _requeue(self, batch: CommandBatch, spec: JobSpec, origin: str, attempt: int) -> None:
        fields = {"attempt": attempt, "run": "", "started_at": "", "step": 0, "total_steps": 0, "eta_s": 0}
        record_change(
            batch, spec.job_id, "requeued", fields, self.records.retention_s, data={"attempt": attempt}
        )
        queue = Queue(origin, connection=self.redis)
        batch.pipeline.hset(
            rq_job_key(spec.job_id), mapping={"status": "queued", "worker_name": "", "started_at": ""}
        )
        batch.pipeline.lpush(queue.key, spec.job_id)
        batch.pipeline.sadd(Queue.redis_queues_keys, queue.key)
        # RQ's own clean-up may have failed it first (an abandoned job): it is not failed.
        batch.pipeline.zrem(FailedJobRegistry(origin, connection=self.redis).key, spec.job_id)

    def _fail(self, batch: CommandBatch, spec: JobSpec, origin: str | None, attempts: int) -> bool:
        message = f"{ERRORS['worker_lost'].message} (after {attempts} attempts)"
        error = JobError(name="worker_lost", message=message)
        now = utc_now()
        fields = {"error": error.model_dump_json(), "finished_at": now}
        record_change(batch, spec.job_id, "failed", fields, self.records.retention_s, spec.webhook, now)
        if origin is not None:
            failed = FailedJobRegistry(origin, connection=self.redis)
            seconds, _ = self.redis.time()
            batch.pipeline.hset(rq_job_key(spec.job_id), mapping={"status": "failed", "ended_at": now})
            batch.pipeline.zadd(failed.key, {spec.job_id: seconds + self.records.max_retention_s})
        if not batch.run(self.redis):
            return False
        log.warning("job %s failed worker_lost after %d attempt(s)", spec.job_id, attempts)
        self._delete_images(spec)
        return True

    def _delete_images(self, spec: JobSpec) -> None:
        """Delete the images a lost run of ``spec``'s job may have stored: a job that did not succeed
        shows none. (S3 down: they stay unseen orphans until the bucket's lifecycle rule.)"""
        if self.delete_objects is not None:
            with suppress(*STORAGE_ERRORS):
                self.delete_objects(image_object_keys(spec.object_folder, spec.samples, spec.output_format))


def clear_stale_registration(worker: BaseWorker) -> bool:
    """Clear the RQ registration a process of ``worker``'s name left when it died (RQ would refuse
    to start under that name until the registration expires, minutes later); return whether there
    was one. A configured worker name belongs to one process: the one starting now."""
    if not worker.connection.exists(worker.key) or worker.connection.hexists(worker.key, "death"):
        return False
    log.warning("worker %s: clearing the registration a lost process of this name left", worker.name)
    worker.register_death()
    return True
