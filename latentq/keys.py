"""The Redis key layout and object-key layout: every name latentq stores under is built here."""

from rq import Queue
from rq.job import Job

#: Prefix of every Redis key and RQ queue latentq owns (RQ adds its own ``rq:`` prefix).
PREFIX = "latentq"


def job_key(job_id: str) -> str:
    """Return the Redis key of a job's record (a hash)."""
    return f"{PREFIX}:job:{job_id}"


def job_events_key(job_id: str) -> str:
    """Return the Redis key of a job's event stream (a Stream; terminal events today)."""
    return f"{PREFIX}:job:{job_id}:events"


def preview_key(job_id: str) -> str:
    """Return the Redis key of a job's latest preview (JPEG bytes)."""
    return f"{PREFIX}:job:{job_id}:preview"


def owner_jobs_key(owner: str) -> str:
    """Return the Redis key of API key ``owner``'s job index (a sorted set by creation time)."""
    return f"{PREFIX}:owner:{owner}:jobs"


def cancel_key(job_id: str) -> str:
    """Return the Redis key whose presence asks the worker to cancel ``job_id``."""
    return f"{PREFIX}:job:{job_id}:cancel"


#: The pub/sub channel on which a cancel request is announced (the message: the job id), so that
#: the worker running the job learns of it without looking at ``cancel_key`` at every step.
CANCEL_CHANNEL = f"{PREFIX}:cancels"


def idempotency_key(owner: str, key_digest: str) -> str:
    """Return the Redis key remembering an ``Idempotency-Key`` (by digest) of API key ``owner``."""
    return f"{PREFIX}:idempotency:{owner}:{key_digest}"


def owner_webhook_key(owner: str) -> str:
    """Return the Redis key of API key ``owner``'s webhook settings (a hash: secrets, default URL)."""
    return f"{PREFIX}:owner:{owner}:webhook"


def owner_disabled_webhooks_key(owner: str) -> str:
    """Return the Redis key of the URLs that answered ``owner``'s webhooks with 410 Gone (a hash)."""
    return f"{PREFIX}:owner:{owner}:webhook:disabled"


#: The RQ queue of webhook deliveries, taken by the dispatcher (never by a GPU worker). Its name
#: cannot clash with a model's queue (``latentq:<id>``).
WEBHOOK_QUEUE = f"{PREFIX}-webhooks"


def queue_name(model_id: str) -> str:
    """Return the RQ queue name for jobs of model ``model_id`` (one queue per model)."""
    return f"{PREFIX}:{model_id}"


def job_folder(account: str, job_id: str) -> str:
    """Return the S3 folder of a job's objects: ``{account}/{job_id}``, ``account`` being the
    account's public id (``Principal.handle``, never a digest of a key); never built from user input."""
    return f"{account}/{job_id}"


def image_object_key(folder: str, index: int, extension: str = "png") -> str:
    """Return the S3 object key of image ``index`` (0-based) of the job whose objects are in ``folder``."""
    return f"{folder}/{index}.{extension}"


def image_object_keys(folder: str, samples: int, extension: str = "png") -> list[str]:
    """Return the S3 object keys of all ``samples`` images of a job (those a run may have stored)."""
    return [image_object_key(folder, index, extension) for index in range(samples)]


def input_object_key(folder: str, name: str) -> str:
    """Return the S3 object key of a job's input image ``name`` (``init``, ``mask``), stored as PNG."""
    return f"{folder}/inputs/{name}.png"


def rq_job_key(job_id: str) -> str:
    """Return the Redis key of RQ's own hash for ``job_id`` (same id as our record)."""
    return Job.key_for(job_id)


#: The sorted set of leases on claimed jobs: job id -> when the lease expires (Unix seconds, the
#: Redis server's clock). A worker holds a lease from the moment it takes a job from its queue
#: until the job ends, and renews it with its heartbeat; an expired lease means a lost worker.
LEASES = f"{PREFIX}:leases"
#: Which worker holds each lease (a hash: job id -> worker name).
LEASE_HOLDERS = f"{PREFIX}:lease-holders"


def worker_alive_key(worker_name: str) -> str:
    """Return the key that marks worker ``worker_name`` alive: set with every heartbeat, expiring
    ``LATENTQ_WORKER_LOST_S`` after the last (RQ's own registration outlives a dead worker)."""
    return f"{PREFIX}:worker-alive:{worker_name}"


def account_key(account_id: str) -> str:
    """Return the Redis key of an account (a hash: name, created_at, limits, balance)."""
    return f"{PREFIX}:account:{account_id}"


#: Account names -> account ids (a hash): names are unique.
ACCOUNT_NAMES = f"{PREFIX}:account-names"


def api_key_key(digest: str) -> str:
    """Return the Redis key of a managed API key, by the SHA-256 of its secret (a hash: key id,
    account, scopes, name, created/last-used/expiry/revoked times); the secret is never stored."""
    return f"{PREFIX}:api-key:{digest}"


#: Key ids -> the digest their record is stored under (a hash), for listing and revoking by id.
API_KEY_IDS = f"{PREFIX}:api-key-ids"


def account_keys_key(account_id: str) -> str:
    """Return the Redis key of the ids of an account's API keys (a set)."""
    return f"{PREFIX}:account:{account_id}:keys"


def ledger_key(account_id: str) -> str:
    """Return the Redis key of an account's credit ledger (a Stream: job, amount, reason, balance)."""
    return f"{PREFIX}:account:{account_id}:ledger"


#: Every administrative action, appended (a Stream: actor, action, target, detail).
AUDIT_STREAM = f"{PREFIX}:audit"


def rate_key(key_id: str) -> str:
    """Return the Redis key of an API key's rate limit state (its GCRA theoretical arrival time)."""
    return f"{PREFIX}:rate:{key_id}"


def account_active_key(account_id: str) -> str:
    """Return the Redis key of an account's queued and running jobs (a sorted set: job id -> when
    its record lapses, so a job that never ended stops counting then)."""
    return f"{PREFIX}:account:{account_id}:active"


def drained_key(model_id: str, bucket: int) -> str:
    """Return the Redis key counting the jobs of ``model_id`` that ended in 10 s ``bucket``
    (Unix seconds // 10): the queue's drain rate, for ``queue_full``'s ``Retry-After``."""
    return f"{PREFIX}:drained:{model_id}:{bucket}"


def rq_queue_key(queue: str) -> str:
    """Return the Redis key of RQ queue ``queue``'s list of waiting job ids."""
    return Queue.redis_queue_namespace_prefix + queue
