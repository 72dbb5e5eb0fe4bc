"""Worker process start-up: load the model, warm it up, check storage, then take jobs.

Run ``python -m worker``; configure with ``LATENTQ_*`` variables (see the README).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

from PIL.Image import Image
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.serializers import JSONSerializer

from latentq.keys import queue_name
from latentq.logs import configure_logging
from latentq.loras import LoraSpec
from latentq.models import FLOW_FAMILIES, ModelRegistry, ModelSpec
from latentq.periodic import call_with_backoff
from latentq.probes import Vitals, serve_probes
from latentq.reaper import Reaper, clear_stale_registration
from latentq.records import JobRecords
from latentq.redis_client import redis_client
from latentq.settings import WorkerSettings, get_registry, get_worker_settings
from latentq.storage import STORAGE_ERRORS, ImageStore
from worker.cancel_watch import CancelWatch
from worker.context import WarmState
from worker.diffusion.adapters import LoadedAdapters, adapter_file
from worker.diffusion.compiling import configure_compile, parse_sizes
from worker.diffusion.controlnets import load_controlnet
from worker.diffusion.flow import FlowPipeline
from worker.diffusion.hotswap import HotSwapAdapters
from worker.diffusion.loading import resolve_device
from worker.diffusion.pipelines import WarmPipeline
from worker.diffusion.safety import SafetyChecker
from worker.diffusion.upscalers import Resampler, Upscaler
from worker.embedded.models import BUILDERS, CONTROLNET_BUILDERS, SAFETY_CHECKER_BUILDERS, ensure_tiny_model
from worker.metrics import REGISTRY, declare_models
from worker.patient_store import transient
from worker.safety import SafetyGate
from worker.warm_worker import WarmWorker

log = logging.getLogger("latentq.worker")


def served_models(settings: WorkerSettings, registry: ModelRegistry) -> list[ModelSpec]:
    """Return the registry entries this worker serves; refuse ids the registry lacks."""
    ids = settings.worker_models or (registry.default_id,)
    unknown = [model_id for model_id in ids if registry.get(model_id) is None]
    if unknown:
        raise SystemExit(f"LATENTQ_WORKER_MODELS names unregistered models {unknown}; known {registry.ids()}")
    return [registry.models[model_id] for model_id in ids]


def built_source(
    what: str, source: str, embedded_name: str | None, builders: Mapping[str, Any], settings: WorkerSettings
) -> str:
    """Return what ``from_pretrained`` loads for registry entry ``what``: its ``source``, or the
    embedded model ``embedded_name`` (one of ``builders``), built first if missing."""
    if embedded_name is None:
        return source
    if embedded_name not in builders:
        raise SystemExit(f"{what}: unknown embedded name {embedded_name!r}; embedded: {sorted(builders)}")
    return str(ensure_tiny_model(settings.embedded_model_dir / embedded_name, embedded_name))


def model_source(model: ModelSpec, settings: WorkerSettings) -> str:
    """Return what ``from_pretrained`` loads for ``model`` (``built_source``)."""
    return built_source(f"model {model.id!r}", model.source, model.embedded_name, BUILDERS, settings)


def load_controlnets(
    models: list[ModelSpec], registry: ModelRegistry, settings: WorkerSettings
) -> dict[str, dict[str, Any]]:
    """Load every registered ControlNet of the served models' families, once each; return them by
    family, then id."""
    families = {model.family for model in models}
    device = resolve_device(settings.device)
    loaded: dict[str, dict[str, Any]] = {family: {} for family in families}
    for controlnet in registry.controlnets.values():
        if controlnet.family in families:
            loaded[controlnet.family][controlnet.id] = load_controlnet(
                built_source(
                    f"ControlNet {controlnet.id!r}",
                    controlnet.source,
                    controlnet.embedded_name,
                    CONTROLNET_BUILDERS,
                    settings,
                ),
                device,
            )
    return loaded


def safety_gates(
    models: list[ModelSpec], registry: ModelRegistry, settings: WorkerSettings
) -> dict[str, SafetyGate]:
    """Return the safety gate of each served model whose images are checked, by model id; each
    checker is loaded once, however many models it checks."""
    checkers: dict[str, SafetyChecker] = {}
    gates = {}
    for model in models:
        mode, spec = registry.safety_of(model)
        if mode == "off" or spec is None:
            continue
        if spec.id not in checkers:
            checkers[spec.id] = SafetyChecker.load(
                built_source(
                    f"safety checker {spec.id!r}",
                    spec.source,
                    spec.embedded_name,
                    SAFETY_CHECKER_BUILDERS,
                    settings,
                ),
                settings.device,
            )
        gates[model.id] = SafetyGate(mode, checkers[spec.id])
        log.info("model %s: safety %s with checker %s", model.id, mode, spec.id)
    return gates


def load_pipeline(
    model: ModelSpec, settings: WorkerSettings, controlnets: dict[str, Any] | None = None
) -> WarmPipeline | Upscaler | Resampler:
    """Load ``model`` with the wrapper of its family (with ``controlnets``, by id, if it draws) and
    warm it up."""
    pipeline: WarmPipeline | Upscaler | Resampler
    if settings.compile:
        configure_compile(settings.compile_cache_dir)
    compiling = {"compile_backend": settings.compile_backend, "compile_on_cpu": settings.compile_on_cpu}
    if model.family == "resampler":
        pipeline = Resampler()
    elif model.family == "upscaler-x4":
        pipeline = Upscaler.load(model_source(model, settings), settings.device)
    elif model.family in FLOW_FAMILIES:
        source = model_source(model, settings)
        pipeline = FlowPipeline.load(source, settings.device, settings.compile, t5=model.t5, **compiling)
    else:
        source = model_source(model, settings)
        pipeline = WarmPipeline.load(source, settings.device, settings.compile, controlnets, **compiling)
        pipeline.adapters = lora_cache(pipeline, model, registry_loras(settings), settings)
    if isinstance(pipeline, WarmPipeline):
        sizes = parse_sizes(list(settings.compile_sizes)) or [(model.defaults.width, model.defaults.height)]
        pipeline.compile_sizes = sizes
        pipeline.compile_batch = settings.max_batch
    if settings.warmup:
        log.info("warm-up generation of %s took %.2f s", model.id, pipeline.warm_up(model.tasks[0]))
    return pipeline


def registry_loras(settings: WorkerSettings) -> dict[str, LoraSpec]:
    """Return the registered LoRA adapters, by id."""
    return get_registry(settings).loras


def lora_cache(
    pipeline: WarmPipeline, model: ModelSpec, loras: dict[str, LoraSpec], settings: WorkerSettings
) -> LoadedAdapters | HotSwapAdapters | None:
    """Return the cache of ``pipeline``'s LoRA adapters, loading registered ones on first use; a
    compiled pipeline gets hot-swap slots instead, filled now with the adapters that fit it
    (None: no adapter fits, jobs name none)."""

    def locate(lora_id: str) -> Any:
        return adapter_file(loras[lora_id], settings.embedded_model_dir)

    if pipeline.compile_watch.enabled:
        fitting = [lora.id for lora in loras.values() if lora.fits(model.id, model.family)]
        if not fitting:
            return None
        return HotSwapAdapters(pipeline.pipe, locate, fitting, settings.lora_slots, settings.lora_max_rank)
    return LoadedAdapters(
        pipeline.pipe, locate, settings.max_loaded_loras, int(settings.lora_cache_mib * 2**20)
    )


def watermark_of(settings: WorkerSettings) -> Callable[[Image], Image] | None:
    """Return what marks each stored image (``LATENTQ_WATERMARK``), or None."""
    if not settings.watermark:
        return None
    try:  # imported only when on: OpenCV is slow to import
        from worker.watermark import Watermark
    except ImportError as error:
        raise SystemExit(
            f"LATENTQ_WATERMARK needs invisible-watermark ({error}): pip install --no-deps "
            "invisible-watermark==0.2.0 (its other needs come with the worker's: see the README)"
        ) from error
    return Watermark().mark


def wait_for_services(store: ImageStore, redis: Redis) -> None:
    """Wait until the bucket and Redis answer: a worker started while either is briefly down (or
    not up yet) takes jobs once both are. A refusal (wrong credentials, a bad bucket name) ends
    the start-up at once."""

    def check() -> None:
        store.ensure_bucket()
        redis.ping()

    def retry_on(error: Exception) -> bool:
        return isinstance(error, RedisError | OSError) or (
            isinstance(error, STORAGE_ERRORS) and transient(error)
        )

    def on_retry(error: Exception, wait_s: float) -> None:
        log.warning("waiting for S3 and Redis (%s); next try in %.1f s", error, wait_s)

    call_with_backoff(check, retry_on, on_retry)


def build_worker(settings: WorkerSettings, redis: Redis, warm: WarmState) -> WarmWorker:
    """Return an RQ worker listening on the queue of each model ``warm`` holds, running its jobs
    with ``warm``."""
    queues = [Queue(queue_name(id_), connection=redis, serializer=JSONSerializer) for id_ in warm.pipelines]
    worker = WarmWorker(
        queues, connection=redis, serializer=JSONSerializer, name=settings.worker_name, warm=warm,
        lease_s=settings.worker_lost_s,
    )  # fmt: skip
    worker.heartbeat_interval_s = settings.heartbeat_interval_s
    worker.max_batch = settings.max_batch
    worker.fair_queue_depth = settings.fair_queue_depth
    worker.batch_wait_s = settings.batch_wait_ms / 1000
    worker.drain_timeout_s = settings.drain_timeout_s
    worker.job_monitoring_interval = max(1, int(settings.heartbeat_interval_s))
    return worker


def main() -> int:
    """Start a worker; return its exit code."""
    settings = get_worker_settings()
    configure_logging("worker", settings)
    started = time.perf_counter()
    vitals = Vitals()  # /livez from now on, /readyz once the models are warm (LATENTQ_METRICS_PORT)
    serve_probes(settings, REGISTRY, vitals)
    store = ImageStore(settings)
    redis = redis_client(settings)
    wait_for_services(store, redis)
    registry = get_registry(settings)
    models = served_models(settings, registry)
    controlnets = load_controlnets(models, registry, settings)
    pipelines = {model.id: load_pipeline(model, settings, controlnets[model.family]) for model in models}
    for model_id, gate in safety_gates(models, registry, settings).items():
        pipelines[model_id].safety = gate
    declare_models(pipelines)
    records = JobRecords(redis, settings.job_retention_s, settings.max_job_retention_s)
    warm = WarmState(
        pipelines, store, records, CancelWatch(records).start(),
        settings.progress_interval_s, settings.webhook_progress_interval_s, watermark_of(settings),
        settings.png_compress_level,
    )  # fmt: skip
    worker = build_worker(settings, redis, warm)
    worker.vitals = vitals
    clear_stale_registration(worker)
    # Before taking jobs: the jobs of workers lost meanwhile are recovered first.
    reaper = Reaper(
        records,
        worker.leases,
        settings.max_attempts,
        max(1.0, settings.worker_lost_s / 6),
        store.delete,
        worker.refill_queues,  # held jobs never wait on an idle worker's empty queue for long
    ).start()
    worker.recover = reaper.recover  # what a worker that gives its jobs up hands them to
    log.info("worker ready for models %s in %.1f s", list(pipelines), time.perf_counter() - started)
    vitals.ready = True
    try:
        worker.serve()
    finally:
        worker.drain()  # the last round's uploads and records
        reaper.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
