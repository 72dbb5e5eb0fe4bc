"""Settings: one pydantic-settings class per process kind, read from ``LATENTQ_*`` variables.

Read them through the cached ``get_api_settings()`` / ``get_worker_settings()``; nothing else
in latentq reads the environment. Every field is listed in the README's configuration table.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from latentq.models import PACKAGED_REGISTRY, ModelRegistry, ModelSpec, SafetyMode, build_registry


def split_commas(value: object) -> object:
    """Turn ``"a, b,,c"`` into ``("a", "b", "c")``; leave other values to pydantic."""
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return value


class CommonSettings(BaseSettings):
    """Settings every latentq process reads."""

    # frozen: settings never change after start-up, and can key caches of clients.
    model_config = SettingsConfigDict(env_prefix="LATENTQ_", extra="ignore", frozen=True)

    #: Redis holding the queues and job records. With ``redis_sentinels``, only its database, user,
    #: password and scheme (``rediss``: TLS) count: the address is the master Sentinel names.
    redis_url: str = "redis://127.0.0.1:6379/0"
    #: Redis Sentinel addresses (comma-separated ``host:port``): every process then talks to the
    #: master they name, and follows a failover without restart. Empty: ``redis_url``'s server.
    redis_sentinels: Annotated[tuple[str, ...], NoDecode] = ()
    #: The master's name in the sentinels' configuration (``sentinel monitor <name> ...``).
    redis_sentinel_master: str = "mymaster"
    #: Password of the sentinels themselves (their ``requirepass``), when they ask for one.
    redis_sentinel_password: SecretStr | None = None
    #: The model registry file (TOML ``[[models]]`` tables); default: the embedded tiny models.
    models_file: Path = PACKAGED_REGISTRY
    #: More registry entries, as a JSON list; each adds to or replaces the file's entry of its id.
    models: tuple[ModelSpec, ...] = ()
    #: Model of requests that name none; default: the registry's first.
    default_model: str | None = None
    #: Safety mode of the models whose registry entry sets no ``safety``: ``off`` (images not
    #: checked), ``flag`` (checked, marked ``nsfw``) or ``filter`` (flagged ones replaced by black).
    safety: SafetyMode = "off"
    #: Safety checker (a ``[[safety_checkers]]`` id) of the models whose entry names none; default:
    #: the registry's first.
    safety_checker: str | None = None
    #: S3-compatible endpoint; None means AWS S3 itself.
    s3_endpoint_url: str | None = None
    #: Endpoint used in presigned URLs, when clients reach S3 by another address than workers.
    s3_presign_endpoint_url: str | None = None
    s3_bucket: str = "latentq"
    s3_region: str = "us-east-1"
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    #: When set, image URLs are ``{base}/{key}`` (a public bucket or CDN) instead of presigned.
    s3_public_base_url: str | None = None
    #: Lifetime of a presigned image URL, seconds (S3 allows at most 7 days).
    s3_url_expires_s: int = Field(3600, ge=1, le=604800)
    #: How long job records stay readable after they are created, seconds (a request may ask for
    #: another ``retention_s`` up to ``max_job_retention_s``).
    job_retention_s: int = Field(86400, ge=60)
    #: Longest retention a request may ask for, seconds; the S3 lifecycle rule keeps objects this long.
    max_job_retention_s: int = Field(7 * 86400, ge=60)
    #: Hosts webhooks may be sent to even though they are (or resolve to) loopback or private
    #: addresses (comma-separated; local development, tests, trusted internal receivers).
    webhook_allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ()

    #: Fair share between accounts (``latentq.fair_share``): most jobs each model's RQ queue holds,
    #: topped up round robin from the accounts' waiting jobs (at least a worker's ``max_batch``, so
    #: rounds fill: each round taken tops it up again; a light account's job waits about
    #: depth / max_batch rounds); 0: off (one FIFO queue). API and workers read it.
    fair_queue_depth: int = Field(8, ge=0)
    #: Seconds a job's lease lasts without a heartbeat: a job whose worker is lost this long is
    #: recovered by a live process's reaper (requeued, or failed ``worker_lost``). At least twice
    #: the workers' ``heartbeat_interval_s``. A delivery's lease adds twice ``webhook_timeout_s``.
    worker_lost_s: float = Field(30.0, ge=2)
    #: Most runs of one job (the first included) when workers running it are lost; then it fails
    #: ``worker_lost``. Likewise for the dispatchers lost sending one delivery.
    max_attempts: int = Field(3, ge=1, le=100)
    #: How the process logs: ``json``, one JSON object a line (``latentq.logs``), or ``text``, for
    #: people (``make run``).
    log_format: Literal["json", "text"] = "json"
    #: Least severe level logged: ``DEBUG``, ``INFO``, ``WARNING``, ``ERROR`` or ``CRITICAL``.
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    #: Prometheus metrics: the API's ``GET /metrics`` and its per-request HTTP metrics, and
    #: ``/metrics`` on a worker's or dispatcher's ``metrics_port``; off: none of them (the probes,
    #: ``/livez`` and ``/readyz``, still answer on ``metrics_port``).
    metrics: bool = True
    #: Port of a worker's or dispatcher's listener for ``/metrics``, ``/livez`` and ``/readyz`` (a
    #: thread of its own), and a second port for the API's ``/metrics``; None: no listener (the API
    #: still serves ``/metrics`` on its own port).
    metrics_port: int | None = Field(None, ge=1, le=65535)
    #: Address that listener binds.
    metrics_host: str = "0.0.0.0"

    _split_hosts = field_validator("webhook_allowed_hosts", "redis_sentinels", mode="before")(split_commas)

    @field_validator("log_format", "log_level", mode="before")
    @classmethod
    def _any_case(cls, value: object, info: ValidationInfo) -> object:
        if not isinstance(value, str):
            return value
        return value.upper() if info.field_name == "log_level" else value.lower()


class ApiSettings(CommonSettings):
    """Settings of the API process."""

    #: ``development`` or ``production``: production refuses weak bootstrap keys.
    env: Literal["development", "production"] = "development"
    #: Bootstrap API keys (comma-separated in the environment): every scope, unlimited credits.
    #: Required in development; in production optional (keys made with ``latentq-admin``), and
    #: each at least 32 characters.
    api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    #: Requests a managed key may make per ``rate_limit_period_s`` (a burst of that many, then
    #: one every period / limit); an account's own ``rate_limit`` replaces it. Bootstrap keys
    #: are not limited.
    rate_limit: int = Field(150, ge=1)
    rate_limit_period_s: float = Field(10.0, gt=0)
    #: Queued and running jobs an account may have at once (``too_many_jobs`` beyond); an
    #: account's own ``max_jobs`` replaces it.
    max_jobs_per_account: int = Field(50, ge=1)
    #: Queued jobs a model's queue may hold (``queue_full`` beyond: back-pressure for everyone).
    max_queue_depth: int = Field(10_000, ge=1)
    #: Origins browsers may call the API from (CORS; comma-separated, ``*`` for any). Empty: CORS
    #: is off, and browsers refuse cross-origin calls.
    cors_origins: Annotated[tuple[str, ...], NoDecode] = ()
    #: Longest a job may run on a worker before it fails with ``timeout``, seconds.
    job_timeout_s: int = Field(600, ge=1)

    #: Most Redis connections the API's asyncio client for submits and quick reads holds.
    async_redis_connections: int = Field(1000, ge=10)
    #: Most long waits one API process holds at once (event streams, ``Prefer: wait``, Stability's
    #: synchronous routes), each blocking one connection of a pool of their own, so waits never
    #: take the connections submits need.
    max_streams: int = Field(1000, ge=1)
    #: Most of those one account may hold in one API process.
    max_streams_per_account: int = Field(100, ge=1)
    #: Longest the Stability-compatible routes wait for their job before answering 504, seconds.
    sync_timeout_s: float = Field(300.0, gt=0)

    #: Replicas that must acknowledge a submit's writes (Redis ``WAIT``) before the API answers
    #: 202; none within ``redis_replica_wait_ms``: 503 ``service_unavailable``, so a failover loses
    #: no accepted job. Default: 1 with Sentinel, else 0 (no wait).
    redis_wait_replicas: int | None = Field(None, ge=0)
    #: Longest a submit waits for those acknowledgements, milliseconds.
    redis_replica_wait_ms: int = Field(1000, ge=1)

    _split_keys = field_validator("api_keys", "cors_origins", mode="before")(split_commas)

    @property
    def replicas_to_wait_for(self) -> int:
        """Replicas a submit's writes must reach before it is answered (``redis_wait_replicas``)."""
        if self.redis_wait_replicas is not None:
            return self.redis_wait_replicas
        return 1 if self.redis_sentinels else 0


class WorkerSettings(CommonSettings):
    """Settings of a worker process."""

    #: Registered model ids this worker keeps warm and takes jobs for (comma-separated);
    #: empty: the default model.
    worker_models: Annotated[tuple[str, ...], NoDecode] = ()
    #: Where embedded models (``source = "embedded:<name>"``) are built, if missing.
    embedded_model_dir: Path = Path.home() / ".cache" / "latentq" / "models"
    #: Torch device: ``auto`` picks CUDA when available, else CPU.
    device: Literal["auto", "cuda", "cpu"] = "auto"
    #: Run one small generation at start-up, before taking jobs.
    warmup: bool = True
    #: Name the worker registers under in RQ; default is RQ's own (host and pid based).
    worker_name: str | None = None
    #: Seconds between heartbeats while a job runs: each renews the leases of the worker's jobs.
    heartbeat_interval_s: float = Field(10.0, gt=0)
    #: Seconds a warm shutdown (SIGTERM) may take to finish the current round and its uploads;
    #: then (or at a second SIGTERM) the worker hands its jobs back and exits with status 1.
    drain_timeout_s: float = Field(60.0, gt=0)
    #: Seconds between progress updates while a job samples (0: every step).
    progress_interval_s: float = Field(0.25, ge=0)
    #: Most images sampled together in one pipeline call, across jobs (1: no batching).
    max_batch: int = Field(8, ge=1, le=64)
    #: Milliseconds to wait for more jobs when a batch is not full, under concurrent load only (a lone
    #: job after a lone job never waits); 0: take only what is already queued.
    batch_wait_ms: float = Field(50.0, ge=0, le=1000)
    #: ``torch.compile`` each model's denoiser (UNet or transformer) on CUDA, with dynamic shapes;
    #: the warm-up compiles the sizes of ``compile_sizes`` before the worker takes jobs.
    compile: bool = False
    #: Sizes (``WIDTHxHEIGHT`` pixels, comma-separated) the warm-up compiles, at batch 1 and 2;
    #: empty: each model's default size.
    compile_sizes: Annotated[tuple[str, ...], NoDecode] = ()
    #: ``torch.compile`` backend: ``inductor`` (fast kernels; needs a C compiler), or ``aot_eager``
    #: / ``eager`` (no code generation: for checking recompiles, as the tests do).
    compile_backend: Literal["inductor", "aot_eager", "eager"] = "inductor"
    #: Compile on CPU too (``compile`` alone applies on CUDA only): for tests and benchmarks.
    compile_on_cpu: bool = False
    #: Folder of the compile caches (inductor's kernels, Triton's), meant to be a persistent
    #: volume so a restarted worker does not compile again; unset: torch's default under /tmp.
    compile_cache_dir: Path | None = None
    #: Highest rank of any LoRA adapter, with ``compile``: adapters are hot-swapped into slots padded
    #: to this rank, so switching adapters does not recompile (a higher-rank adapter is refused).
    lora_max_rank: int = Field(64, ge=1, le=1024)
    #: LoRA adapter slots per model with ``compile``: the most adapters one job may name (4).
    lora_slots: int = Field(4, ge=1, le=16)
    #: Most LoRA adapters kept loaded per model (the least recently used is unloaded first); at least
    #: the most one request may name.
    max_loaded_loras: int = Field(8, ge=4, le=1024)
    #: Most MiB of LoRA adapter weights kept loaded per model, as measured when each loads; 0: no cap
    #: but ``max_loaded_loras``.
    lora_cache_mib: float = Field(0.0, ge=0)
    #: Seconds between two ``progress`` webhooks of one job (0: at every progress update).
    webhook_progress_interval_s: float = Field(2.0, ge=0)
    #: Mark every stored image of at least 256x256 pixels with an invisible watermark (DWT-DCT, the
    #: message SDXL's reference code uses: ``worker.watermark``).
    watermark: bool = False
    #: zlib level of the PNG files a worker writes: 0 (no compression) to 9 (smallest, slowest);
    #: the default 1 encodes several times faster than Pillow's 6 for files a few % larger.
    png_compress_level: int = Field(1, ge=0, le=9)

    _split_models = field_validator("worker_models", "compile_sizes", mode="before")(split_commas)

    @field_validator("compile_sizes")
    @classmethod
    def _sizes_are_sizes(cls, sizes: tuple[str, ...]) -> tuple[str, ...]:
        for size in sizes:
            width, _, height = size.lower().partition("x")
            if not (width.isdigit() and height.isdigit() and int(width) % 8 == 0 and int(height) % 8 == 0):
                raise ValueError(f"LATENTQ_COMPILE_SIZES: {size!r} is not WIDTHxHEIGHT in multiples of 8")
        return sizes

    @model_validator(mode="after")
    def _beats_within_the_lease(self) -> WorkerSettings:
        if self.heartbeat_interval_s * 2 > self.worker_lost_s:
            raise ValueError(
                f"LATENTQ_HEARTBEAT_INTERVAL_S ({self.heartbeat_interval_s:g}) must be at most half of "
                f"LATENTQ_WORKER_LOST_S ({self.worker_lost_s:g}): a lease must outlive a missed beat"
            )
        return self


class DispatcherSettings(CommonSettings):
    """Settings of the webhook dispatcher (``python -m dispatcher``)."""

    #: Seconds one delivery attempt may take (connect, send, answer) before it counts as failed.
    webhook_timeout_s: float = Field(10.0, gt=0, le=60)
    #: Seconds before each retry of a failed ``started``/``completed`` delivery (comma-separated): the
    #: default makes 9 attempts over about 7.7 hours (see the README).
    webhook_retry_schedule_s: Annotated[tuple[Annotated[int, Field(ge=1)], ...], NoDecode] = (
        5, 30, 120, 600, 1800, 3600, 7200, 14400,
    )  # fmt: skip
    #: A PEM file of more CA certificates to trust for https receivers (e.g. an internal CA), in
    #: addition to the usual public ones.
    webhook_ca_file: Path | None = None
    #: Seconds a URL that answered 410 Gone stays disabled for its API key.
    webhook_disabled_s: int = Field(7 * 86400, ge=1)
    #: Name the dispatcher registers under in RQ; default is RQ's own.
    dispatcher_name: str | None = None

    _split_schedule = field_validator("webhook_retry_schedule_s", mode="before")(split_commas)


@lru_cache
def get_registry(settings: CommonSettings) -> ModelRegistry:
    """Return the model registry ``settings`` describe (read once per settings)."""
    return build_registry(
        settings.models_file,
        settings.models,
        settings.default_model,
        settings.safety,
        settings.safety_checker,
    )


@lru_cache
def get_api_settings() -> ApiSettings:
    """Return the API settings, read once from the environment."""
    return ApiSettings()


@lru_cache
def get_worker_settings() -> WorkerSettings:
    """Return the worker settings, read once from the environment."""
    return WorkerSettings()


@lru_cache
def get_dispatcher_settings() -> DispatcherSettings:
    """Return the dispatcher settings, read once from the environment."""
    return DispatcherSettings()
