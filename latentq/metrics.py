"""What every process kind's Prometheus metrics share: their registry, the histogram buckets, and the
queue gauges the API computes from Redis at each scrape.

Each process kind defines its metrics in its own module, on a registry of its own
(``api/metrics.py``, ``worker/metrics.py``, ``dispatcher/metrics.py``; the README's Metrics section
lists them all). Every name starts ``latentq_``. Labels are bounded: a model label takes registry
ids only, a route label route templates only; no job id, key, account or raw path is ever a label.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, GCCollector, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.metrics import disable_created_metrics
from prometheus_client.registry import Collector
from redis import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from latentq.fair_share import fair_prefix, pending_key
from latentq.keys import queue_name, rq_job_key, rq_queue_key
from latentq.redis_client import redis_client
from latentq.settings import CommonSettings

log = logging.getLogger("latentq.metrics")

# Counters and histograms without their ``_created`` series: half the lines of a scrape, no use here.
disable_created_metrics()

#: Buckets of the job stage histograms (queue wait, sampling, encode, upload, end to end), seconds:
#: from a tiny model's milliseconds to a large model's minutes.
STAGE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)
#: Buckets of HTTP request latency, seconds.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Most accounts with jobs waiting looked at, per model, for the oldest job's age.
ROTATION_SCAN = 200
#: Seconds the scrape's Redis reads may take before the queue gauges are left out of the scrape.
QUEUE_READ_TIMEOUT_S = 0.5


def new_registry() -> CollectorRegistry:
    """Return a registry with the process's own metrics (CPU, memory, open files, GC, Python)."""
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def stamp_seconds(stamp: bytes | str | None) -> float | None:
    """Return RQ's timestamp ``stamp`` (``2024-01-02T03:04:05.678901Z``) as epoch seconds."""
    if not stamp:
        return None
    text = stamp.decode() if isinstance(stamp, bytes) else stamp
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class QueueStats(Collector):
    """``latentq_queue_depth{model}`` and ``latentq_queue_oldest_job_age_seconds{model}``, read from
    Redis at each scrape (a few pipelined round trips for every model together), and
    ``latentq_queue_stats_up`` (1: read; 0: Redis did not answer within ``QUEUE_READ_TIMEOUT_S``,
    and the two gauges are left out of that scrape rather than the scrape failing or hanging).

    A model's depth is every job waiting for it: in its RQ queue and held back in its accounts'
    fair-share lists (``latentq.fair_share``). The oldest job's age is the time since RQ's
    ``enqueued_at`` of the oldest of the heads of those lists (0 when none waits)."""

    def __init__(self, redis: Redis, models: Sequence[str]) -> None:
        #: A client of its own, with short timeouts and no retries (``for_settings``).
        self.redis = redis
        self.models = list(models)

    @classmethod
    def for_settings(cls, settings: CommonSettings, models: Sequence[str]) -> QueueStats:
        """Return the collector of ``models``' queues on ``settings``' Redis (through Sentinel too)."""
        timeout = QUEUE_READ_TIMEOUT_S
        # No retries (redis-py makes 3, with backoff, by default): a scrape must not wait them out.
        redis = redis_client(
            settings, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
        return cls(redis, models)

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        depth, age, up = self._families()
        try:
            read = self.read()
        except (RedisError, OSError) as error:
            log.warning("queue metrics left out of this scrape: Redis did not answer (%s)", error)
            up.add_metric([], 0)
            return [up]
        for model, (waiting, oldest_s) in read.items():
            depth.add_metric([model], waiting)
            age.add_metric([model], oldest_s)
        up.add_metric([], 1)
        return [depth, age, up]

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(
                "latentq_queue_depth",
                "Jobs waiting for a worker, per model: in its RQ queue and its accounts' fair-share lists.",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "latentq_queue_oldest_job_age_seconds",
                "Seconds the oldest waiting job of each model has been queued (0: none waits).",
                labels=["model"],
            ),
            GaugeMetricFamily(
                "latentq_queue_stats_up", "1 if the queue gauges were read from Redis in this scrape, else 0."
            ),
        ]

    def read(self) -> dict[str, tuple[int, float]]:
        """Return each model's (waiting jobs, seconds its oldest has waited), in three round trips:
        the queues' lengths, heads and accounts in turn; the head of each account's list; the
        ``enqueued_at`` of each of those heads."""
        queues = [queue_name(model) for model in self.models]
        with self.redis.pipeline(transaction=False) as pipeline:
            for queue in queues:
                pipeline.llen(rq_queue_key(queue))
                pipeline.get(pending_key(queue))
                pipeline.lindex(rq_queue_key(queue), 0)
                pipeline.lrange(fair_prefix(queue) + "rotation", 0, ROTATION_SCAN - 1)
            replies = pipeline.execute()
        rows = [replies[index : index + 4] for index in range(0, len(replies), 4)]
        depths = [int(queued) + int(held or 0) for queued, held, _, _ in rows]
        heads: list[list[bytes]] = [[head] if head else [] for _, _, head, _ in rows]
        rotations: list[list[bytes]] = [accounts for _, _, _, accounts in rows]
        with self.redis.pipeline(transaction=False) as pipeline:
            for queue, accounts in zip(queues, rotations, strict=True):
                for account in accounts:
                    pipeline.lindex(fair_prefix(queue) + account.decode(), 0)
            account_heads = iter(pipeline.execute())
        for found, accounts in zip(heads, rotations, strict=True):
            found += [head for _ in accounts if (head := next(account_heads))]
        with self.redis.pipeline(transaction=False) as pipeline:
            for job_id in (job_id for found in heads for job_id in found):
                pipeline.hget(rq_job_key(job_id.decode()), "enqueued_at")
            stamps = iter(pipeline.execute())
        now = time.time()
        stats = {}
        for model, depth, found in zip(self.models, depths, heads, strict=True):
            enqueued = [at for _ in found if (at := stamp_seconds(next(stamps))) is not None]
            stats[model] = (depth, max(0.0, now - min(enqueued)) if enqueued else 0.0)
        return stats
