"""Looking a job record up for a caller (the public view itself is ``latentq.views``)."""

from __future__ import annotations

import uuid

from latentq.errors import LatentqError
from latentq.records import JobRecord, JobRecords


def find_record(job_id: str, records: JobRecords, owner: str) -> JobRecord:
    """Return the record of ``job_id`` if it belongs to ``owner`` (an API key's owner id); else raise
    ``not_found`` (another key's job reads exactly like one that does not exist)."""
    record = records.get(job_id) if _is_job_id(job_id) else None
    if record is None or record.owner not in ("", owner):
        raise LatentqError("not_found", f"No job with id '{job_id}' (it may have expired).")
    return record


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value
    except ValueError:
        return False
