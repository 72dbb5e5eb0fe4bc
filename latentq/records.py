"""Job records: the public view of each job, one Redis hash per job, shared by API and worker.

RQ's job carries the work; the record is what clients read. Every write goes through
``JobRecords`` so the field layout lives in one place. Records expire after the retention.
"""

from __future__ import annotations

import base64
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from redis import Redis

from latentq.command_batch import CommandBatch
from latentq.contract import JobError, JobSpec, JobStatus, StoredImage, WebhookDelivery
from latentq.deliveries import queue_delivery
from latentq.keys import (
    CANCEL_CHANNEL,
    cancel_key,
    job_key,
    owner_jobs_key,
    preview_key,
    rq_job_key,
)
from latentq.rq_writer import AnyPipeline
from latentq.transitions import append_event, reconcile, record_change

#: Prefix of the record fields holding the state of each webhook event type's deliveries.
_DELIVERY_FIELD = "webhook:"

# Sets a field of a record only if the record still exists (never recreates an expired one).
_HSET_IF_EXISTS = """
if redis.call('exists', KEYS[1]) == 1 then return redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end
return -1
"""


def utc_now(later_s: float = 0.0) -> str:
    """Return the current time (plus ``later_s`` seconds) as an ISO 8601 UTC timestamp with
    milliseconds."""
    moment = datetime.now(UTC) + timedelta(seconds=later_s)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class JobRecord:
    """A job record as read from Redis."""

    def __init__(self, fields: dict[str, str]) -> None:
        self.id = fields["id"]
        self.status = JobStatus(fields["status"])
        self.model = fields["model"]
        self.owner = fields.get("owner", "")
        self.spec = JobSpec.model_validate_json(fields["spec"])
        self.images = [StoredImage.model_validate(item) for item in json.loads(fields.get("images") or "[]")]
        self.error = JobError.model_validate_json(fields["error"]) if fields.get("error") else None
        self.created_at = fields["created_at"]
        self.started_at = fields.get("started_at") or None
        self.finished_at = fields.get("finished_at") or None
        self.step = int(fields.get("step") or 0)
        self.total_steps = int(fields.get("total_steps") or 0)
        self.eta_s = float(fields.get("eta_s") or 0)
        self.preview_step = int(fields.get("preview_step") or 0)
        self.timings: dict[str, float] = json.loads(fields.get("timings") or "{}")
        self.batch_size = int(fields["batch_size"]) if fields.get("batch_size") else None
        #: Which run of the job this is (1 first; more after its worker was lost).
        self.attempt = int(fields.get("attempt") or 1)
        self.webhook_deliveries = {
            name.removeprefix(_DELIVERY_FIELD): WebhookDelivery.model_validate_json(value)
            for name, value in fields.items()
            if name.startswith(_DELIVERY_FIELD)
        }


class JobRecords:
    """Reads and writes job records in Redis."""

    def __init__(self, redis: Redis, retention_s: int, max_retention_s: int | None = None) -> None:
        self.redis = redis
        self.retention_s = retention_s
        self.max_retention_s = max(retention_s, max_retention_s or retention_s)

    def create(self, spec: JobSpec, pipeline: AnyPipeline, owner: str = "", cost: int = 0) -> str:
        """Queue the write of a new ``queued`` record for ``spec``, submitted by account ``owner`` and
        charged ``cost`` thousandths of a credit (what an end other than success refunds), on
        ``pipeline``, and its entry in the owner's job index; return its created_at."""
        key = job_key(spec.job_id)
        retention_s = spec.retention_s or self.retention_s
        now = time.time()
        created_at = utc_now()
        mapping: dict[Any, Any] = {
            "id": spec.job_id,
            "status": JobStatus.QUEUED.value,
            "model": spec.model,
            "owner": owner,
            "spec": spec.model_dump_json(),
            "created_at": created_at,
            "attempt": 1,
        }
        if cost:
            mapping["cost"] = cost
        pipeline.hset(key, mapping=mapping)
        pipeline.expire(key, retention_s)
        if owner:
            index = owner_jobs_key(owner)
            pipeline.zadd(index, {spec.job_id: now})
            pipeline.zremrangebyscore(index, "-inf", now - self.max_retention_s)  # long expired: drop
            pipeline.expire(index, self.max_retention_s)
        append_event(pipeline, spec.job_id, "queued", ttl_s=retention_s)
        return created_at

    def list_ids(self, owner: str, before: float | None, count: int) -> list[tuple[str, float]]:
        """Return up to ``count`` of ``owner``'s (job id, created time) pairs, newest first, created
        strictly before ``before`` (epoch seconds; None: now)."""
        upper = f"({before}" if before is not None else "+inf"
        entries: Any = self.redis.zrevrangebyscore(
            owner_jobs_key(owner), upper, "-inf", start=0, num=count, withscores=True
        )
        return [(member.decode(), float(score)) for member, score in entries]

    def get(self, job_id: str) -> JobRecord | None:
        """Return the record of ``job_id``, reconciled with RQ's view, or None if there is none."""
        with self.redis.pipeline(transaction=False) as pipeline:
            pipeline.hgetall(job_key(job_id))
            pipeline.hget(rq_job_key(job_id), "status")
            fields, rq_status = pipeline.execute()
        if b"id" not in fields or b"spec" not in fields:
            return None  # none, or a partial hash a write of an older release left: expired
        record = JobRecord({k.decode(): v.decode() for k, v in fields.items()})
        status, error = reconcile(record.status, rq_status and rq_status.decode())
        if status is not record.status:
            record.status, record.error = status, error or record.error
        return record

    def _change(
        self, spec: JobSpec, event: str, fields: dict[str, Any], run: str | None = None
    ) -> CommandBatch:
        """Return the batch of record change ``event`` of ``spec``'s job with ``fields`` and the
        webhook delivery it calls for, run only if the job's state machine allows it then (and,
        with ``run``, the job is still in that run: see ``mark_running``)."""
        batch = record_change(
            CommandBatch(), spec.job_id, event, fields, self.retention_s, spec.webhook, utc_now()
        )
        return _in_run(batch, spec.job_id, run)

    def mark_running(self, spec: JobSpec, run: str = "") -> bool:
        """Record that a worker started the job of ``spec`` as run ``run`` (a token its later
        writes name, so a worker that lost the job, say frozen, then requeued and run elsewhere,
        can change nothing); False: it may not run (canceled, ended, or its record expired)."""
        return self._change(spec, "started", {"started_at": utc_now(), "run": run}).run(self.redis)

    def progress(
        self,
        job_id: str,
        step: int,
        total_steps: int,
        publish: bool,
        eta_s: float = 0.0,
        notify: bool = False,
        run: str | None = None,
    ) -> None:
        """Note denoising step ``step`` of ``total_steps`` of a running job (in ``run``): written and
        published when ``publish``, sent to the job's webhook when ``notify``. One round trip (none
        if neither)."""
        if not publish and not notify:
            return
        fields: dict[str, Any] = {"step": step, "total_steps": total_steps, "eta_s": round(eta_s, 2)}
        data = {"step": step, "total_steps": total_steps}
        batch = CommandBatch()
        if notify:
            queue_delivery(batch.pipeline, job_id, "progress", utc_now(), step=step)
        if publish:
            record_change(batch, job_id, "progress", fields, self.retention_s, data=data)
        else:
            batch.require_in(job_key(job_id), "status", [JobStatus.RUNNING.value])
        _in_run(batch, job_id, run).run(self.redis)

    def preview(self, job_id: str, step: int, jpeg: bytes, run: str | None = None) -> None:
        """Keep ``jpeg`` as the running job's latest preview (made at ``step``) and publish it."""
        batch = CommandBatch()
        batch.pipeline.set(preview_key(job_id), jpeg, ex=self.retention_s)
        data = {"step": step, "jpeg": base64.b64encode(jpeg).decode()}
        record_change(batch, job_id, "preview", {"preview_step": step}, self.retention_s, data=data)
        _in_run(batch, job_id, run).run(self.redis)

    def status(self, job_id: str) -> JobStatus | None:
        """Return the stored status of ``job_id`` (None: no record)."""
        value: Any = self.redis.hget(job_key(job_id), "status")
        return JobStatus(value.decode()) if value else None

    def get_preview(self, job_id: str) -> bytes | None:
        """Return the job's latest preview JPEG, if any."""
        data = self.redis.get(preview_key(job_id))
        return data.encode() if isinstance(data, str) else data

    def request_cancel(self, job_id: str) -> None:
        """Ask the worker running (or about to run) ``job_id`` to stop it at its next step: the flag
        it checks before it starts, announced on ``CANCEL_CHANNEL`` to the workers' cancel watch."""
        with self.redis.pipeline() as pipeline:
            self._announce_cancel(pipeline, job_id)
            pipeline.execute()

    def _announce_cancel(self, pipeline: AnyPipeline, job_id: str) -> None:
        pipeline.set(cancel_key(job_id), 1, ex=self.retention_s)
        pipeline.publish(CANCEL_CHANNEL, job_id)

    def cancel_requested(self, *job_ids: str) -> list[str]:
        """Return those of ``job_ids`` whose cancel was requested (one round trip)."""
        with self.redis.pipeline(transaction=False) as pipeline:
            for job_id in job_ids:
                pipeline.exists(cancel_key(job_id))
            flags = pipeline.execute()
        return [job_id for job_id, flag in zip(job_ids, flags, strict=True) if flag]

    def mark_canceled(self, spec: JobSpec, run: str | None = None) -> bool:
        """Record that the job of ``spec`` was canceled; False if it had already ended."""
        return self._change(spec, "canceled", {"finished_at": utc_now()}, run).run(self.redis)

    def cancel(self, spec: JobSpec) -> bool:
        """Cancel the job of ``spec`` if it has not ended: record it canceled and ask the worker that
        may be running it to stop (``request_cancel``'s flag and announcement), in one script call.
        Return False, changing nothing, if it had already ended."""
        batch = self._change(spec, "canceled", {"finished_at": utc_now()})
        self._announce_cancel(batch.pipeline, spec.job_id)
        return batch.run(self.redis)

    def mark_succeeded(
        self,
        spec: JobSpec,
        images: list[StoredImage],
        timings: dict[str, float],
        batch_size: int = 1,
        run: str | None = None,
    ) -> bool:
        """Record that the job of ``spec`` finished with ``images``, the milliseconds of its stages,
        and how many jobs were sampled in its pipeline call (itself included); False if it had
        ended meanwhile (canceled): its images are then not the job's."""
        payload = json.dumps([image.model_dump() for image in images])
        fields = {"images": payload, "finished_at": utc_now(), "timings": json.dumps(timings),
                  "batch_size": str(batch_size)}  # fmt: skip
        return self._change(spec, "succeeded", fields, run).run(self.redis)

    def mark_failed(self, spec: JobSpec, error: JobError, run: str | None = None) -> bool:
        """Record that the job of ``spec`` failed with ``error``; False if it had already ended."""
        fields = {"error": error.model_dump_json(), "finished_at": utc_now()}
        return self._change(spec, "failed", fields, run).run(self.redis)

    def record_delivery(self, job_id: str, event: str, delivery: WebhookDelivery) -> None:
        """Keep how the latest delivery of webhook ``event`` of ``job_id`` went (unless it expired)."""
        script = self.redis.register_script(_HSET_IF_EXISTS)
        script(keys=[job_key(job_id)], args=[_DELIVERY_FIELD + event, delivery.model_dump_json()])


def _in_run(batch: CommandBatch, job_id: str, run: str | None) -> CommandBatch:
    """Make ``batch`` run only while ``job_id`` is in run ``run`` (None: whichever)."""
    return batch.require_in(job_key(job_id), "run", [run]) if run is not None else batch
