"""The one place that reads configuration: environment variables with the prefix ``OLSS_``.

``get_settings()`` validates everything at start-up and stops with a message that names the bad
setting (``OLSS_MAX_BATCH_SIZE: Input should be greater than 0``) instead of failing later.
"""

from __future__ import annotations

import base64
import ipaddress
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "OLSS_"
WEBHOOK_SECRET_PREFIX = "whsec_"
WEBHOOK_SECRET_MIN_BYTES = 24
"""Standard Webhooks: secrets are 24 to 64 random bytes, base64-encoded after ``whsec_``."""


class ConfigError(SystemExit):
    """Raised (and exits the process) when a setting is invalid."""


class Settings(BaseSettings):
    """Every ``OLSS_*`` setting of the gateway, the worker and ``olss serve``."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    # Infrastructure
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Redis for jobs, events, images and heartbeats "
        "(with OLSS_REDIS_CLUSTER any node; with OLSS_REDIS_SENTINELS the database, user, "
        "password and TLS of the primary, whose host is ignored)"
    )
    redis_cluster: bool = Field(
        False, description="OLSS_REDIS_URL names a node of a Redis Cluster: the clients find "
        "the other nodes and follow its slots (database 0 only)"
    )
    redis_sentinels: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="comma-separated host:port of Redis Sentinels: the "
        "clients connect to the primary they name for OLSS_REDIS_SENTINEL_MASTER and follow "
        "a failover"
    )
    redis_sentinel_master: str | None = Field(
        None, description="the name the Sentinels know the primary by (with "
        "OLSS_REDIS_SENTINELS)"
    )
    model: str | None = Field(
        None, description="worker: hub id, local diffusers folder or embedded name (default "
        "olss-digits); gateway: the model of requests that name none"
    )
    device: str = Field("auto", description="worker: auto (CUDA when present), cpu, cuda or cuda:N")
    schedule_dir: Path | None = Field(
        None, description="writable schedule registry, searched before the built-in one"
    )
    cache_dir: Path = Field(
        Path.home() / ".cache" / "olss-serve",
        description="worker cache; holds the writable schedule registry when OLSS_SCHEDULE_DIR "
        "is unset",
    )
    log_level: Literal["critical", "error", "warning", "info", "debug"] = Field(
        "info", description="log level of every process"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines of every process: text, or one JSON object per line"
    )

    # Gateway
    gateway_host: str = Field("127.0.0.1", description="gateway: address to listen on")
    gateway_port: int = Field(8000, ge=0, le=65535, description="gateway: port to listen on")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="gateway: comma-separated bearer keys; unset or empty "
        "= no auth (a list of only commas or spaces stops start-up)"
    )
    log_prompts: bool = Field(
        False, description="gateway: log each job's prompt at INFO (off: prompts are never logged)"
    )
    max_body_bytes: int = Field(
        262_144, ge=1024, description="gateway: largest request body (413 past it)"
    )
    max_header_bytes: int = Field(
        16_384, ge=1024,
        description="gateway: largest request target plus header lines (400 past it)",
    )
    request_timeout_s: float = Field(
        10.0, gt=0, description="gateway: a client must send a whole request (headers and "
        "body) within this long, else its connection is closed"
    )
    keep_alive_s: int = Field(
        75, ge=1, description="gateway: an idle keep-alive connection is closed after this "
        "long; longer than clients and proxies keep theirs (httpx 5 s, aiohttp 15 s, nginx "
        "60 s), so they close first and never send on a connection the gateway is closing"
    )
    sse_max_streams: int = Field(
        2000, ge=1, description="gateway: concurrent event streams per process (429 past it)"
    )
    redis_max_connections: int = Field(
        64, ge=4, description="gateway: connections per Redis pool (two pools); a request "
        "waits for a free one"
    )
    redis_pool_timeout_s: float = Field(
        5.0, gt=0, description="gateway: wait this long for a free Redis connection, then 503"
    )
    max_queue_depth: int = Field(
        256, ge=1, description="gateway: queued (not yet started) jobs per model before 429"
    )
    sync_timeout_s: float = Field(
        60.0, gt=0, description="gateway: a sync POST /generate waits this long, then 202"
    )
    accept_sleeping_models: bool = Field(
        False, description="gateway: queue jobs for a model that has no live worker now but had "
        "a ready one (validated against its last heartbeat), and report ready without workers: "
        "for models that scale to zero (an autoscaler starts a worker for the queued jobs); "
        "off: such a model is a 503 no_worker"
    )

    # Protocols, webhooks and previews (app/api/routes/openai_images.py, a1111.py, app/webhooks)
    webhook_secret: SecretStr | None = Field(
        None, description="gateway: the Standard Webhooks signing secret, whsec_ and base64 "
        "(at least 24 bytes); unset: a request with a webhook is refused"
    )
    webhook_allow_networks: Annotated[list[ipaddress.IPv4Network | ipaddress.IPv6Network],
                                      NoDecode] = Field(
        default_factory=list, description="gateway: comma-separated networks (CIDR) webhooks "
        "may target although not public; default none: no private, loopback or link-local "
        "address"
    )
    webhook_timeout_s: float = Field(
        10.0, gt=0, description="gateway: a webhook receiver must answer within this long"
    )
    webhook_max_attempts: int = Field(
        6, ge=1, description="gateway: attempts at one webhook event before it is given up"
    )
    webhook_retry_base_s: float = Field(
        1.0, gt=0, description="gateway: wait before a webhook's second attempt; it doubles "
        "each attempt up to OLSS_WEBHOOK_RETRY_MAX_S"
    )
    webhook_retry_max_s: float = Field(
        300.0, gt=0, description="gateway: longest wait between two webhook attempts"
    )
    webhook_lease_ms: int = Field(
        30_000, ge=100, description="gateway: a job's webhook whose gateway is silent this long "
        "is taken over by another gateway"
    )
    url_signing_secret: SecretStr | None = Field(
        None, description="gateway: key of the signed image URLs given when OLSS_API_KEYS is "
        "set (OpenAI url replies, webhook links); default: derived from OLSS_API_KEYS"
    )
    a1111_preview_every: int = Field(
        1, ge=0, description="gateway: A1111 txt2img jobs get a preview every this many steps "
        "for /sdapi/v1/progress (0: none; override_settings.show_progress_every_n_steps wins)"
    )

    # Jobs and queue
    job_ttl_s: int = Field(3600, ge=10, description="job record, images and events expire after")
    image_ttl_s: int = Field(
        600, ge=1, description="worker: a finished job's images expire this long after it "
        "finished (capped at OLSS_JOB_TTL_S)"
    )
    delivered_image_ttl_s: int = Field(
        60, ge=1, description="gateway: an image expires this long after a sync reply or an "
        "image GET delivered it"
    )
    max_attempts: int = Field(3, ge=1, description="deliveries before the dead-letter stream")
    lease_ms: int = Field(
        30_000, ge=100, description="a job whose worker is silent this long is claimed again"
    )

    # Worker
    worker_id: str | None = Field(None, description="worker: its id (default hostname-pid)")
    job_timeout_s: float = Field(
        600.0, ge=0, description="worker: a job still running this long after it started fails "
        "(not retried) within one denoising step and frees the worker; 0: no deadline"
    )
    max_batch_size: int = Field(8, ge=1, description="worker: images per batch")
    max_batch_wait_ms: int = Field(
        50, ge=0, description="worker: the longest a batch waits for more jobs to fill it "
        "(at most one batch's time; see OLSS_ADAPTIVE_BATCH_WAIT)"
    )
    adaptive_batch_wait: bool = Field(
        True, description="worker: a batch waits for more jobs only while some are due "
        "(clients of just-stored jobs, a burst under way); off: every batch waits "
        "OLSS_MAX_BATCH_WAIT_MS"
    )
    png_compress_level: int = Field(
        1, ge=0, le=9, description="worker: zlib level of PNG images, 0-9 (lossless at every "
        "level; 0 and 1 deflate an image in slices on several threads: on 2 cores 1 encodes a "
        "photo-like 512x512 or 1024x1024 image 4 to 6 times as fast as 6, for files about 15% "
        "larger: docs/BENCHMARKS.md)"
    )
    overlap_results: bool = Field(
        True, description="worker: encode and store a batch's images in a background thread "
        "while the next batch runs"
    )
    overlap_start: bool = Field(
        True, description="worker: a batch of new jobs sends its START (the Redis step that "
        "marks them running) while its first denoising step runs; a redelivered job always "
        "waits for it"
    )
    heartbeat_ttl_s: float = Field(
        10.0, gt=0, description="worker: a heartbeat older than this means the worker is gone"
    )
    worker_metrics_host: str = Field("127.0.0.1", description="worker: /metrics address")
    worker_metrics_port: int = Field(
        9400, ge=0, le=65535, description="worker: /metrics port (0 picks a free one)"
    )
    torch_threads: int | None = Field(
        None, ge=1, description="worker: CPU threads for torch (default: torch's own choice)"
    )

    # Self-calibration at start-up (workers/self_calibration.py)
    auto_calibrate: bool = Field(
        True, description="worker: calibrate the model's OLSS schedules at start-up (before "
        "it reports ready) when the registry lacks one of OLSS_CALIBRATE_STEPS at its default "
        "guidance; off, or when calibration fails, an OLSS request gets DPM-Solver++(2M)"
    )
    calibrate_steps: Annotated[list[int], NoDecode] = Field(
        default_factory=lambda: [4, 5, 6, 8], description="worker: comma-separated step "
        "counts the start-up calibration fits"
    )
    calibrate_guidance: Annotated[list[float], NoDecode] = Field(
        default_factory=list, description="worker: comma-separated guidance grid of the "
        "start-up calibration (default: 1, 2, 4, 7.5, 15 and the model's default guidance)"
    )
    calibrate_prompts: int | None = Field(
        None, ge=2, description="worker: calibration prompts, the first of the packaged list "
        "(default: all of them)"
    )
    calibrate_validation: int | None = Field(
        None, ge=0, description="worker: of those, held out to validate each schedule against "
        "the peers (default 4)"
    )
    calibrate_teacher: str | None = Field(
        None, description="worker: the teacher as name:T (default dpmsolver++3m:250)"
    )
    calibrate_max_evaluations: int | None = Field(
        None, ge=1, description="worker: model evaluations the path searches may spend "
        "(default 12000; the teacher and held-out runs come on top)"
    )
    calibrate_batch_size: int | None = Field(
        None, ge=1, description="worker: examples per UNet call of the start-up calibration "
        "(default 24 at 512x512, fewer for larger images; twice the rows with guidance): lower "
        "it if the device runs out of memory"
    )
    calibrate_lock_ttl_s: float = Field(
        30.0, gt=0, description="worker: the calibration lock expires this long after its "
        "holder stopped renewing it (died), and a waiting replica takes over"
    )

    # Worker fast path (workers/fast_path.py); unset = the device's default (on for CUDA)
    fp16: bool | None = Field(
        None, description="worker: fp16 weights and activations (default: on for CUDA)"
    )
    sdpa: bool | None = Field(
        None, description="worker: PyTorch scaled-dot-product attention (default: on)"
    )
    channels_last: bool | None = Field(
        None, description="worker: channels-last UNet, the VAE stays NCHW (default: on for CUDA)"
    )
    compile: bool | None = Field(
        None, description="worker: torch.compile the UNet and VAE decoder in warm-up (default off)"
    )
    compile_mode: Literal[
        "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"
    ] = Field("default", description="worker: the torch.compile mode")
    cuda_graphs: Literal["off", "step", "loop"] | None = Field(
        None, description="worker: CUDA graphs of the OLSS loop, text encoder and VAE decoder, "
        "captured in warm-up: step (one per denoising step), loop (one for all steps: progress "
        "and cancels at the end only) or off (default: step on CUDA, off elsewhere)"
    )
    batch_buckets: Annotated[list[int], NoDecode] = Field(
        default_factory=list, description="worker: with OLSS_COMPILE or CUDA graphs a batch is "
        "padded up to the next of these image counts, each warmed up (comma-separated; default "
        "the powers of two below OLSS_MAX_BATCH_SIZE, and it)"
    )

    # Request limits
    max_prompt_chars: int = Field(1000, ge=1, description="limit: characters per prompt")
    min_size: int = Field(16, ge=8, description="limit: smallest width or height")
    max_width: int = Field(1024, ge=8, description="limit: largest width")
    max_height: int = Field(1024, ge=8, description="limit: largest height")
    max_steps: int = Field(150, ge=1, description="limit: most denoising steps")
    max_num_images: int = Field(4, ge=1, description="limit: most images per request")
    max_guidance_scale: float = Field(30.0, gt=0, description="limit: largest guidance scale")
    max_size_factor: float = Field(
        2.0, ge=1, description="limit: width and height at most this times the model's native "
        "size (unless its workers report their own limits)"
    )
    default_sampler_steps: int = Field(
        25, ge=1, description="steps for the diffusers samplers when a request names none"
    )

    # Testing only: fault injection and slow-down for the service tests; keep unset in production.
    test_step_delay_ms: int = Field(0, ge=0, description="testing: sleep this long per step")
    test_fail_prompt: str | None = Field(
        None, description="testing: a worker fails every job whose prompt contains this text"
    )

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            keys = [key.strip() for key in value.split(",") if key.strip()]
            if value and not keys:
                # "," or " " is a list that was meant to hold keys: never serve without auth.
                raise ValueError(
                    "holds no key (only commas or spaces); unset it to serve without auth"
                )
            return keys
        return value

    @field_validator("batch_buckets", "calibrate_steps", "calibrate_guidance", mode="before")
    @classmethod
    def _split_buckets(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("batch_buckets")
    @classmethod
    def _positive_buckets(cls, value: list[int]) -> list[int]:
        if any(size < 1 for size in value):
            raise ValueError(f"image counts must be at least 1, got {value}")
        return sorted(set(value))

    @field_validator("calibrate_steps")
    @classmethod
    def _calibrated_step_counts(cls, value: list[int]) -> list[int]:
        if not value or any(steps < 1 for steps in value):
            raise ValueError(f"must name step counts of at least 1, got {value}")
        return sorted(set(value))

    @field_validator("webhook_allow_networks", mode="before")
    @classmethod
    def _split_networks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("webhook_secret", "url_signing_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("webhook_secret")
    @classmethod
    def _standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            key = value.get_secret_value().removeprefix(WEBHOOK_SECRET_PREFIX)
            try:
                raw = base64.b64decode(key, validate=True)
            except ValueError:
                raise ValueError("must be whsec_ followed by base64") from None
            if len(raw) < WEBHOOK_SECRET_MIN_BYTES:
                raise ValueError(f"must hold at least {WEBHOOK_SECRET_MIN_BYTES} bytes")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinel_addresses(cls, value: list[str]) -> list[str]:
        for address in value:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{address!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _one_redis_topology(self) -> Settings:
        if self.redis_cluster and self.redis_sentinels:
            raise ValueError("OLSS_REDIS_CLUSTER and OLSS_REDIS_SENTINELS exclude each other")
        if bool(self.redis_sentinels) != bool(self.redis_sentinel_master):
            raise ValueError("OLSS_REDIS_SENTINELS and OLSS_REDIS_SENTINEL_MASTER go together")
        if self.redis_cluster:
            url = urlsplit(self.redis_url)
            if url.scheme == "unix" or url.path.strip("/") not in ("", "0"):
                raise ValueError(
                    "OLSS_REDIS_CLUSTER needs a redis:// or rediss:// OLSS_REDIS_URL on database 0"
                )
        return self

    @property
    def finished_image_ttl_s(self) -> int:
        """Seconds a finished job's images are kept: ``OLSS_IMAGE_TTL_S``, within the job's."""
        return min(self.image_ttl_s, self.job_ttl_s)

    @property
    def writable_schedule_dir(self) -> Path:
        """Where new schedules go: ``OLSS_SCHEDULE_DIR``, else a folder in the cache."""
        return self.schedule_dir or self.cache_dir / "schedules"


def load_settings(**overrides: object) -> Settings:
    """Build ``Settings`` from the environment (plus ``overrides``) or exit naming the setting."""
    try:
        return Settings(**overrides)
    except ValidationError as error:
        problems = "; ".join(
            f"{ENV_PREFIX}{'.'.join(str(p) for p in e['loc']).upper()}: {e['msg']}"
            if e["loc"] else e["msg"]  # a rule over several settings names them itself
            for e in error.errors()
        )
        raise ConfigError(f"invalid settings: {problems}") from None


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process-wide settings, validated once."""
    return load_settings()
