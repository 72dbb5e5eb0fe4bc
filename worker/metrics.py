"""A worker's Prometheus metrics, served on ``LATENTQ_METRICS_PORT`` (``latentq.probes``).

Per job: jobs running and finished (by model, task and outcome), and the seconds of each stage
(queue wait, sampling, encode, upload, end to end); per pipeline call: its batch size and the
seconds the accelerator sampled (whose rate is the worker's busy ratio); per round: the idle gap
before it, and the busy ratio as a gauge (since start and over the last 60 s); images and denoising
steps made (whose rates are images/s and steps/s); torch.compile's compilations (by phase) and
fallbacks to eager; and on CUDA the accelerator's memory.
"""

from __future__ import annotations

import statistics
import sys
import threading
import time
from collections import deque
from collections.abc import Collection, Iterable
from typing import Any

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from rq.job import Job

from latentq.metrics import STAGE_BUCKETS, new_registry

#: The worker process's metrics.
REGISTRY = new_registry()

#: The model label of a job for a model this worker does not serve (labels stay the served ids).
OTHER_MODEL = "other"

JOBS_RUNNING = Gauge(
    "latentq_worker_jobs_running", "Jobs this worker runs now, by model.", ["model"], registry=REGISTRY
)
JOBS_FINISHED = Counter(
    "latentq_jobs_finished",
    "Jobs this worker ended, by model, task and outcome (succeeded, canceled, or the error's name).",
    ["model", "task", "outcome"],
    registry=REGISTRY,
)
QUEUE_WAIT = Histogram(
    "latentq_job_queue_wait_seconds",
    "Seconds a job waited queued before a worker took it, by model.",
    ["model"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
SAMPLING = Histogram(
    "latentq_job_sampling_seconds",
    "Seconds a succeeded job spent sampling (with its batch-mates), by model.",
    ["model"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
ENCODE = Histogram(
    "latentq_job_encode_seconds",
    "Seconds a succeeded job spent encoding its images, by model.",
    ["model"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
UPLOAD = Histogram(
    "latentq_job_upload_seconds",
    "Seconds a succeeded job spent uploading its images, by model.",
    ["model"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
END_TO_END = Histogram(
    "latentq_job_end_to_end_seconds",
    "Seconds from a succeeded job's submit to its recorded success, by model.",
    ["model"],
    buckets=STAGE_BUCKETS,
    registry=REGISTRY,
)
BATCH_SIZE = Histogram(
    "latentq_worker_batch_size",
    "Jobs sampled together in one pipeline call, by model.",
    ["model"],
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
    registry=REGISTRY,
)
SAMPLING_SECONDS = Counter(
    "latentq_worker_sampling_seconds",
    "Seconds this worker spent in pipeline calls, by model: its rate is the busy ratio.",
    ["model"],
    registry=REGISTRY,
)
ROUND_IDLE = Histogram(
    "latentq_worker_round_idle_seconds",
    "Seconds sampling sat idle between the end of one round and the start of the next (under load,"
    " what preparing the round cost; when idle, also the wait for work).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
    registry=REGISTRY,
)
BUSY_RATIO = Gauge(
    "latentq_worker_busy_ratio",
    "Share of wall time this worker spent sampling rounds, over a window: since it started, or the"
    " last 60 s.",
    ["window"],
    registry=REGISTRY,
)
IMAGES = Counter(
    "latentq_images_generated", "Images made by succeeded jobs, by model.", ["model"], registry=REGISTRY
)
STEPS = Counter(
    "latentq_sampling_steps",
    "Denoising steps run for succeeded jobs, one per image per step, by model.",
    ["model"],
    registry=REGISTRY,
)

COMPILES = Counter(
    "latentq_worker_torch_compiles",
    "Frames torch.compile compiled, by phase: warm-up (expected) or jobs (a recompile that stalled "
    "sampling; see LATENTQ_COMPILE_SIZES).",
    ["phase"],
    registry=REGISTRY,
)
COMPILE_FALLBACKS = Counter(
    "latentq_worker_torch_compile_fallbacks",
    "Times torch.compile hit its recompile limit and left a frame to run eagerly (slower).",
    registry=REGISTRY,
)


class Utilisation:
    """A worker's busy ratio (seconds sampling rounds ÷ seconds of wall time) since it started and
    over the last ``window_s`` seconds, and the idle gaps between its rounds (ms) in that window."""

    def __init__(self, window_s: float = 60.0, clock: Any = time.monotonic) -> None:
        self.window_s, self.clock = window_s, clock
        self.since = clock()
        self.busy_s = 0.0
        #: The rounds of the window: (sampling start, sampling end, idle ms before it).
        self.rounds: deque[tuple[float, float, float]] = deque()
        self._summarised = self.since
        self._lock = threading.Lock()

    def note_round(self, started: float, ended: float, idle_ms: float) -> dict[str, float] | None:
        """Count a round that sampled from ``started`` to ``ended`` (``clock`` seconds) after
        ``idle_ms`` idle; return a summary (``summary``) once per window, else None."""
        ROUND_IDLE.observe(idle_ms / 1000)
        with self._lock:
            self.busy_s += ended - started
            self.rounds.append((started, ended, idle_ms))
            self._forget(ended)
            if ended - self._summarised < self.window_s:
                return None
            self._summarised = ended
        return self.summary()

    def busy_ratio(self, window: bool = False) -> float:
        """The share of wall time spent sampling: over the last ``window_s`` s, or since the start."""
        now = self.clock()
        with self._lock:
            if not window:
                return self.busy_s / max(now - self.since, 1e-9)
            self._forget(now)
            start = max(now - self.window_s, self.since)
            busy = sum(min(end, now) - max(begin, start) for begin, end, _ in self.rounds if end > start)
            return busy / max(now - start, 1e-9)

    def summary(self) -> dict[str, float]:
        """Busy ratios and the idle gap's median and 95th percentile (ms) over the window."""
        with self._lock:
            idle = sorted(gap for _, _, gap in self.rounds)
        p95 = idle[min(len(idle) - 1, round(0.95 * (len(idle) - 1)))] if idle else 0.0
        return {
            "busy_ratio": round(self.busy_ratio(), 4),
            "busy_ratio_window": round(self.busy_ratio(window=True), 4),
            "idle_ms_median": round(statistics.median(idle), 1) if idle else 0.0,
            "idle_ms_p95": round(p95, 1),
            "rounds": len(idle),
        }

    def _forget(self, now: float) -> None:
        while self.rounds and self.rounds[0][1] <= now - self.window_s:
            self.rounds.popleft()


#: This worker's utilisation; its busy ratios are read at each scrape.
UTILISATION = Utilisation()
BUSY_RATIO.labels("start").set_function(UTILISATION.busy_ratio)
BUSY_RATIO.labels("60s").set_function(lambda: UTILISATION.busy_ratio(window=True))


def declare_models(served: Iterable[str]) -> None:
    """Give the per-model gauges and counters a series of each served model from the start (0
    rather than absent: an autoscaler reading ``latentq_worker_jobs_running`` sees an idle worker)."""
    for model in served:
        for metric in (JOBS_RUNNING, SAMPLING_SECONDS, IMAGES, STEPS):
            metric.labels(model)
    for phase in ("warm-up", "jobs"):
        COMPILES.labels(phase)


def model_label(model: str, served: Collection[str]) -> str:
    """Return the model label of a job for ``model`` on a worker serving ``served``."""
    return model if model in served else OTHER_MODEL


def job_model(job: Job, served: Collection[str]) -> str:
    """Return the model label of the RQ job ``job`` (its spec's model) on a worker serving ``served``."""
    spec = job.kwargs.get("spec") if isinstance(job.kwargs, dict) else None
    return model_label(str(spec.get("model", "")) if isinstance(spec, dict) else "", served)


def note_taken(jobs: Iterable[Job], served: Collection[str]) -> None:
    """Count how long each of ``jobs`` waited queued, until now that a worker serving ``served``
    took it."""
    now = time.time()
    for job in jobs:
        if job.enqueued_at is not None:
            QUEUE_WAIT.labels(job_model(job, served)).observe(max(0.0, now - job.enqueued_at.timestamp()))


class GpuMemory(Collector):
    """``latentq_gpu_memory_{allocated,reserved,peak}_bytes{device}``: what torch's CUDA allocator
    holds on each device, read at each scrape; nothing unless CUDA is in use in this process.

    ``cuda`` is ``torch.cuda`` (or a fake of it); None: torch's, if torch is loaded (this module
    never imports torch)."""

    def __init__(self, cuda: Any = None) -> None:
        self.cuda = cuda

    def describe(self) -> Iterable[Metric]:
        return self._families()

    def collect(self) -> Iterable[Metric]:
        cuda = self.cuda
        if cuda is None:
            torch = sys.modules.get("torch")
            cuda = torch.cuda if torch is not None else None
        # Never the first CUDA call of the process from a scrape: only once the pipelines made one.
        if cuda is None or not cuda.is_available() or not cuda.is_initialized():
            return []
        families = self._families()
        for index in range(cuda.device_count()):
            device = f"cuda:{index}"
            allocated, reserved, peak = families
            allocated.add_metric([device], cuda.memory_allocated(index))
            reserved.add_metric([device], cuda.memory_reserved(index))
            peak.add_metric([device], cuda.max_memory_allocated(index))
        return families

    @staticmethod
    def _families() -> list[GaugeMetricFamily]:
        return [
            GaugeMetricFamily(f"latentq_gpu_memory_{name}_bytes", text, labels=["device"])
            for name, text in (
                ("allocated", "Bytes of accelerator memory torch's tensors hold."),
                ("reserved", "Bytes of accelerator memory torch's caching allocator holds."),
                ("peak", "Most bytes torch's tensors held at once since the worker started."),
            )
        ]


REGISTRY.register(GpuMemory())


def note_succeeded(
    model: str, task: str, timings_ms: dict[str, float], images: int, steps: int, submitted_at: float | None
) -> None:
    """Count a job of ``model`` (a label) that succeeded: its stages (``timings_ms``, milliseconds
    per stage as ``worker.runner.StageTimings`` keeps them), its ``images`` and denoising ``steps``
    per image, and, when its submit time is known (epoch seconds), its end-to-end time."""
    JOBS_FINISHED.labels(model, task, "succeeded").inc()
    for histogram, stage in ((SAMPLING, "sampling_ms"), (ENCODE, "encode_ms"), (UPLOAD, "upload_ms")):
        if stage in timings_ms:
            histogram.labels(model).observe(timings_ms[stage] / 1000)
    IMAGES.labels(model).inc(images)
    STEPS.labels(model).inc(steps * images)
    if submitted_at is not None:
        END_TO_END.labels(model).observe(max(0.0, time.time() - submitted_at))
