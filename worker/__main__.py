"""Worker process start-up: load the model, warm it up, check storage, then take jobs.

Run ``python -m worker``; configure with ``LATENTQ_*`` variables (see the README).
"""

from __future__ import annotations

import logging
import sys
import time

from redis import Redis
from rq import Queue
from rq.serializers import JSONSerializer

from latentq.jobs import JobRecords
from latentq.keys import queue_name
from latentq.settings import WorkerSettings, get_worker_settings
from latentq.storage import ImageStore
from worker import runtime
from worker.pipeline import TextToImage
from worker.rq_worker import WarmWorker
from worker.tiny_model import ensure_tiny_model

log = logging.getLogger("latentq.worker")


def load_pipeline(settings: WorkerSettings) -> TextToImage:
    """Load the configured model (building the embedded one if needed) and warm it up."""
    model = settings.model or str(ensure_tiny_model(settings.embedded_model_dir))
    pipeline = TextToImage.load(model, settings.device)
    if settings.warmup:
        log.info("warm-up generation took %.2f s", pipeline.warm_up())
    return pipeline


def build_worker(settings: WorkerSettings, redis: Redis) -> WarmWorker:
    """Return an RQ worker listening on the queue of the configured model."""
    queue = Queue(queue_name(settings.model_id), connection=redis, serializer=JSONSerializer)
    worker = WarmWorker([queue], connection=redis, serializer=JSONSerializer, name=settings.worker_name)
    worker.heartbeat_interval_s = settings.heartbeat_interval_s
    worker.job_monitoring_interval = max(1, int(settings.heartbeat_interval_s))
    return worker


def main() -> int:
    """Start a worker; return its exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = get_worker_settings()
    started = time.perf_counter()
    store = ImageStore(settings)
    store.ensure_bucket()
    redis = Redis.from_url(settings.redis_url)
    redis.ping()
    pipeline = load_pipeline(settings)
    runtime.install(runtime.Runtime(pipeline, store, JobRecords(redis, settings.job_retention_s)))
    worker = build_worker(settings, redis)
    log.info("worker ready for model %r in %.1f s", settings.model_id, time.perf_counter() - started)
    worker.work(logging_level="INFO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
