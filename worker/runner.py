"""Running one job: mark it started, sample, encode, upload, record the outcome.

Every exception ends in a terminal record with a name from the error table, then propagates
so RQ's registries tell the same story.
"""

from __future__ import annotations

import io
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from typing import Any

from PIL import Image as PILImage
from PIL.Image import Image
from redis.exceptions import RedisError
from rq.timeouts import JobTimeoutException

from latentq.contract import JobError, JobSpec, JobStatus, StoredImage
from latentq.errors import ERRORS
from latentq.keys import image_object_key, image_object_keys
from latentq.storage import STORAGE_ERRORS
from worker.context import ImagePipeline, JobContext, JobLog, ObjectStore, WarmState
from worker.encoding import CONTENT_TYPES, PNG_COMPRESS_LEVEL, encode_image
from worker.metrics import JOBS_FINISHED, model_label, note_succeeded
from worker.patient_store import PatientStore
from worker.rounds import is_out_of_memory
from worker.safety import gate_of

log = logging.getLogger("latentq.worker")

#: Denoising steps between two previews of a job that asked for them.
PREVIEW_EVERY = 5

#: Longest error message kept in a job record, characters.
MAX_ERROR_MESSAGE = 500

#: Seconds a job whose images are stored waits at most for Redis to record its outcome.
RECORD_PATIENCE_S = 30.0


class StageTimings:
    """Milliseconds spent in each stage of a job (a stage entered twice accumulates)."""

    def __init__(self) -> None:
        self.ms: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the ``with`` block into stage ``name``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            elapsed = (time.perf_counter() - started) * 1000
            self.ms[name] = round(self.ms.get(name, 0.0) + elapsed, 1)


class StepReporter:
    """Reports denoising steps to the job record (every ``interval_s`` from the start, and the last step),
    and to the job's webhook (at most every ``webhook_interval_s``, never the last step: ``completed``
    follows), and stops the job at the first step after ``cancel`` is set (by the cancel watch: no
    Redis call for it)."""

    def __init__(
        self,
        records: JobLog,
        job_id: str,
        interval_s: float,
        cancel: threading.Event,
        preview: Callable[[Any], bytes] | None = None,
        webhook_interval_s: float | None = None,
        run: str | None = None,
    ) -> None:
        self.records, self.job_id, self.interval_s, self.preview = records, job_id, interval_s, preview
        #: The run of the job whose steps these are (its writes are refused once it is another's).
        self.run = run
        self.cancel = cancel
        #: Seconds between progress webhooks; None: the job wants none.
        self.webhook_interval_s = webhook_interval_s
        self.started = time.monotonic()
        # The first progress write waits an interval too: a job of a few fast steps (SD-Turbo, LCM)
        # writes only its last step, one Redis round trip instead of two (``started`` came before).
        self.published = self.started
        self.notified = float("-inf")
        self.canceled = False
        #: The last denoising step reported (the steps run, once sampling is over).
        self.steps = 0

    def __call__(self, step: int, total_steps: int, latents: Any = None) -> bool:
        """Note ``step`` of ``total_steps``; return True if the job must stop (its cancel was requested).

        With ``preview``, every ``PREVIEW_EVERY`` steps (and the last) a preview of ``latents`` is published.
        """
        if (
            self.preview is not None
            and latents is not None
            and (step % PREVIEW_EVERY == 0 or step >= total_steps)
        ):
            with suppress(RedisError):  # a missed preview is no reason to stop sampling
                self.records.preview(self.job_id, step, self.preview(latents), run=self.run)
        self.steps = step
        now = time.monotonic()
        publish = step >= total_steps or now - self.published >= self.interval_s
        if publish:
            self.published = now
        notify = (
            self.webhook_interval_s is not None
            and step < total_steps
            and now - self.notified >= self.webhook_interval_s
        )
        if notify:
            self.notified = now
        # Remaining steps at the mean step time so far.
        eta_s = (total_steps - step) * (now - self.started) / step
        with suppress(RedisError):  # nor a missed progress write: the outcome is what must be recorded
            self.records.progress(self.job_id, step, total_steps, publish, eta_s, notify, run=self.run)
        self.canceled = self.cancel.is_set()
        return self.canceled


def run_job(context: JobContext, spec: JobSpec) -> list[StoredImage]:
    """Run ``spec`` with ``context`` to a terminal job record and return its stored images.

    A job canceled before it starts never runs; one canceled while it runs stops at its next
    denoising step. Either ends ``canceled`` and returns no images (RQ sees a finished job).
    """
    warm = context.warm
    with warm.cancels.watching(spec.job_id) as cancel:  # watched first: no request slips by
        if warm.records.cancel_requested(spec.job_id):
            if warm.records.mark_canceled(spec):
                JOBS_FINISHED.labels(model_label(spec.model, warm.pipelines), spec.task, "canceled").inc()
            return []
        return _run(context, spec, cancel)


def _run(context: JobContext, spec: JobSpec, cancel: threading.Event) -> list[StoredImage]:
    warm = context.warm
    store = PatientStore(warm.store, context.deadline)
    run = uuid.uuid4().hex  # this run's token: a lost worker's late writes are refused
    if not warm.records.mark_running(spec, run):
        log.info("job %s dropped: it was canceled, had ended or expired before it started", spec.job_id)
        return []
    started = time.perf_counter()
    timings = StageTimings()
    model = model_label(spec.model, warm.pipelines)  # the label of the job's metrics
    try:
        pipeline = pipeline_for(warm, spec.model)
        reporter = step_reporter(warm, spec, pipeline, cancel, run)
        with timings.stage("load_ms"):
            inputs = load_inputs(store, spec)
        with timings.stage("sampling_ms"):
            images, batch_size, nsfw = context.sampler.sample(pipeline, spec, inputs, reporter)
        if reporter.canceled:
            if warm.records.mark_canceled(spec, run):
                JOBS_FINISHED.labels(model, spec.task, "canceled").inc()
            log.info("job %s canceled after %.0f ms", spec.job_id, (time.perf_counter() - started) * 1000)
            return []
        gate = gate_of(pipeline)
        filtering = gate is not None and gate.filters
        stored = store_images(store, spec, images, timings, nsfw, filtering, warm.watermark,
                              warm.png_compress_level)  # fmt: skip
    except RedisError:
        # Its outcome cannot be recorded: the job keeps its lease and runs again once it expires.
        log.warning("job %s: Redis unreachable; left to its lease", spec.job_id)
        raise
    except BaseException as error:
        job_error = classify_error(error)
        log.warning("job %s failed: %s: %s", spec.job_id, job_error.name, job_error.message)
        failed = warm.records.mark_failed(spec, job_error, run)
        if failed:
            JOBS_FINISHED.labels(model, spec.task, job_error.name).inc()
        if failed and job_error.name != "storage_error":
            # A failed job shows no images: delete any an earlier, lost run stored (with S3 down,
            # as after a storage error, they stay unseen orphans until the bucket's lifecycle rule).
            with suppress(*STORAGE_ERRORS):
                warm.store.delete(image_object_keys(spec.object_folder, spec.samples, spec.output_format))
        raise
    recorded = _patiently(
        lambda: warm.records.mark_succeeded(spec, stored, timings.ms, batch_size, run), spec, context.deadline
    )
    if not recorded:
        # Not this run's to record: the job was canceled meanwhile (its images are no job's: leave
        # no orphans), or it was given to another run, which writes the same keys.
        if warm.records.status(spec.job_id) is JobStatus.CANCELED:
            store.delete([image.key for image in stored])
        log.info("job %s ended or moved on before its images were recorded", spec.job_id)
        return []
    note_succeeded(model, spec.task, timings.ms, len(stored), reporter.steps, context.submitted_at)
    log.info("job %s succeeded: %d image(s) in %.0f ms", spec.job_id, len(stored),
             (time.perf_counter() - started) * 1000)  # fmt: skip
    return stored


def _patiently(write: Callable[[], bool], spec: JobSpec, deadline: float) -> bool:
    """Make ``write`` (a job's final record write, its images stored) through a short Redis
    outage: tried again with backoff for up to ``RECORD_PATIENCE_S`` within the job's deadline, so
    a blip does not cost a re-run; after that the RedisError stands (the job is left to its lease)."""
    give_up_at = min(deadline, time.monotonic() + RECORD_PATIENCE_S)
    wait_s = 0.5
    while True:
        try:
            return write()
        except RedisError as error:
            if time.monotonic() + wait_s > give_up_at:
                raise
            log.warning("job %s: Redis unreachable recording its outcome (%s); next try in %.1f s",
                        spec.job_id, error, wait_s)  # fmt: skip
            time.sleep(wait_s)
            wait_s = min(wait_s * 2, 5.0)


def step_reporter(
    warm: WarmState, spec: JobSpec, pipeline: ImagePipeline, cancel: threading.Event, run: str | None = None
) -> StepReporter:
    """Return the step callback of ``spec``'s job: progress, previews if asked (never for a model whose
    safety mode filters: a preview is not checked), progress webhooks if asked, and its cancel."""
    gate = gate_of(pipeline)
    previews = spec.preview and not (gate is not None and gate.filters)
    preview = getattr(pipeline, "preview", None) if previews else None
    wants_progress = spec.webhook is not None and "progress" in spec.webhook.events
    return StepReporter(
        warm.records, spec.job_id, warm.progress_interval_s, cancel, preview,
        warm.webhook_progress_interval_s if wants_progress else None, run,
    )  # fmt: skip


def pipeline_for(warm: WarmState, model: str) -> ImagePipeline:
    """Return the warm pipeline of ``model``; a job for a model this worker lacks fails clearly."""
    if model not in warm.pipelines:
        raise LookupError(f"this worker serves {sorted(warm.pipelines)}, not model '{model}'")
    return warm.pipelines[model]


def load_inputs(store: ObjectStore, spec: JobSpec) -> dict[str, Image]:
    """Return the job's input images (checked and stored as PNG by the API), by name."""
    keys = {"init": spec.init_image_key, "mask": spec.mask_image_key, "control": spec.control_image_key}
    images = {}
    for name, key in keys.items():
        if key is not None:
            image = PILImage.open(io.BytesIO(store.get(key)))
            images[name] = image.convert("L" if name == "mask" else "RGB")
    return images


def store_images(
    store: ObjectStore,
    spec: JobSpec,
    images: list[Image],
    timings: StageTimings | None = None,
    nsfw: list[bool] | None = None,
    filtering: bool = False,
    watermark: Callable[[Image], Image] | None = None,
    png_level: int = PNG_COMPRESS_LEVEL,
) -> list[StoredImage]:
    """Encode each image in the job's format (marked first by ``watermark``, if any; a PNG at zlib
    level ``png_level``), upload it under its server-made key and describe it, with its safety flag
    (``nsfw``: one per image; None: not checked) and whether a flagged one was replaced
    (``filtering``)."""
    timings = timings or StageTimings()
    stored = []
    content_type = CONTENT_TYPES[spec.output_format]
    flags: list[bool | None] = list(nsfw) if nsfw is not None else [None] * len(images)
    if any(flags):
        log.info("job %s: the safety checker flagged %d of %d image(s)%s", spec.job_id, sum(map(bool, flags)),
                 len(images), " (filtered)" if filtering else "")  # fmt: skip
    for index, (image, seed, flagged) in enumerate(zip(images, spec.image_seeds(), flags, strict=True)):
        key = image_object_key(spec.object_folder, index, spec.output_format)
        with timings.stage("encode_ms"):
            data = encode_image(watermark(image) if watermark is not None else image, spec, seed, png_level)
        with timings.stage("upload_ms"):
            store.put(key, data, content_type)
        stored.append(
            StoredImage(
                key=key, seed=seed, width=image.width, height=image.height, content_type=content_type,
                nsfw=flagged, filtered=bool(flagged and filtering),
            )
        )  # fmt: skip
    return stored


def classify_error(error: BaseException) -> JobError:
    """Map an exception raised while running a job to a named job error."""
    if isinstance(error, JobTimeoutException):
        return JobError(name="timeout", message=ERRORS["timeout"].message)
    if is_out_of_memory(error):
        return JobError(name="out_of_memory", message=ERRORS["out_of_memory"].message)
    if isinstance(error, STORAGE_ERRORS):
        return JobError(name="storage_error", message=_describe(error))
    if isinstance(error, KeyboardInterrupt | SystemExit):
        return JobError(name="worker_lost", message="The worker was shut down while running this job.")
    return JobError(name="generation_failed", message=_describe(error))


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:MAX_ERROR_MESSAGE]
