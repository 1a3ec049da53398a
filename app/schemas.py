"""HTTP request and response bodies of the gateway (their JSON schema is the OpenAPI at /docs).

``GenerateRequest`` checks types and static bounds only; ``app.validation`` applies the
configured limits and the model's schedules and turns it into a queueable ``JobSpec``.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, HttpUrl, StrictBool
from pydantic_core import PydanticCustomError

from olss_core.job_states import JobStatus
from olss_core.protocol import (
    SEED_RANGE,
    SIZE_STEP,
    CalibrationProgress,
    JobRecord,
    OutputFormat,
    ScheduleInfo,
    Timings,
    WebhookEvent,
)
from olss_core.samplers import OLSS, SchedulerName

MAX_SEED = SEED_RANGE - 1


def _json_integer(value: object) -> object:
    """JSON Schema's integers: ``16`` and ``16.0`` are, ``true`` and ``"16"`` are not (pydantic's
    lax mode would take them; its strict mode would refuse ``16.0``)."""
    if isinstance(value, bool | str):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


JSON_INTEGER = BeforeValidator(_json_integer)
Size = Annotated[int, Field(ge=SIZE_STEP, multiple_of=SIZE_STEP), JSON_INTEGER]
PositiveInt = Annotated[int, Field(ge=1), JSON_INTEGER]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED), JSON_INTEGER]


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``. Omitted fields take the model's defaults.

    Integers are JSON Schema's (``16.0`` is 16; ``true`` and ``"16"`` are not). The deployment's
    limits (prompt length, sizes per model, steps, the calibrated OLSS step counts) are applied
    by ``app.validation`` and stated in the served OpenAPI schema (``app.openapi``).
    """

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="limited to OLSS_MAX_PROMPT_CHARS characters")
    negative_prompt: str | None = None
    width: Size | None = Field(None, description="default: the model's native width")
    height: Size | None = Field(None, description="default: the model's native height")
    steps: PositiveInt | None = Field(None, description="default: the model's default schedule")
    guidance_scale: float | None = Field(
        None, ge=0, strict=True, description="default: the schedule's"
    )
    seed: Seed | None = Field(
        None, description="random when absent; image n uses (seed + n) mod 2^32"
    )
    num_images: PositiveInt = Field(1, description="limited to OLSS_MAX_NUM_IMAGES")
    scheduler: SchedulerName = OLSS
    output_format: OutputFormat | None = Field(None, description="default: from Accept, else png")
    model: str | None = Field(
        None, min_length=1, description="default: OLSS_MODEL or the one model served"
    )
    webhook: HttpUrl | None = Field(
        None, description="POST the job's events to this URL, signed as Standard Webhooks "
        "(needs OLSS_WEBHOOK_SECRET); public addresses only unless OLSS_WEBHOOK_ALLOW_NETWORKS"
    )
    webhook_events_filter: list[WebhookEvent] | None = Field(
        None, min_length=1, description="the events the webhook gets (default: all)"
    )
    preview: StrictBool | PositiveInt = Field(
        False, description="step events carry a small preview image: true on every step, n on "
        "every n-th"
    )

    @property
    def preview_every(self) -> int:
        """A preview on every n-th step (0: none)."""
        return 1 if self.preview is True else int(self.preview)


class JobLinks(BaseModel):
    self: str
    events: str
    images: list[str] = Field(default_factory=list)

    @classmethod
    def for_job(cls, job_id: str, images: int = 0) -> JobLinks:
        """Links of a job; ``images`` image links once it has succeeded."""
        base = f"/jobs/{job_id}"
        return cls(
            self=base, events=f"{base}/events", images=[f"{base}/images/{n}" for n in range(images)]
        )


class JobAccepted(BaseModel):
    """202 body: the job goes on; poll ``links.self`` or follow ``links.events``."""

    id: str
    status: JobStatus
    links: JobLinks


class ImageOut(BaseModel):
    index: int
    seed: int
    content_type: str
    data_base64: str


class GenerateResult(BaseModel):
    """Sync JSON result of ``POST /generate``."""

    id: str
    status: JobStatus
    model: str
    seed: int
    seeds: list[int]
    scheduler: str
    schedule: str | None
    steps: int
    guidance_scale: float
    width: int
    height: int
    images: list[ImageOut]
    timings: Timings | None


class Progress(BaseModel):
    step: int
    total: int


class JobView(BaseModel):
    """``GET /jobs/{id}``."""

    id: str
    status: JobStatus
    model: str
    queue_position: int | None = Field(description="jobs ahead of this one while queued")
    progress: Progress
    attempts: int
    seed: int
    seeds: list[int]
    scheduler: str
    schedule: str | None
    created_at: float
    started_at: float | None
    finished_at: float | None
    timings: Timings | None
    error: str | None
    error_type: str | None
    webhook_failures: int = Field(0, description="webhook events given up on")
    webhook_error: str | None = Field(None, description="the last failed webhook attempt")
    links: JobLinks

    @classmethod
    def of(cls, record: JobRecord, queue_position: int | None) -> JobView:
        images = record.spec.num_images if record.status is JobStatus.SUCCEEDED else 0
        return cls(
            id=record.id, status=record.status, model=record.model,
            queue_position=queue_position,
            progress=Progress(step=record.step, total=record.total_steps),
            attempts=record.attempts, seed=record.spec.seed, seeds=record.spec.seeds,
            scheduler=record.spec.scheduler, schedule=record.schedule,
            created_at=record.created_at, started_at=record.started_at,
            finished_at=record.finished_at, timings=record.timings,
            error=record.error, error_type=record.error_type,
            webhook_failures=record.webhook_failures, webhook_error=record.webhook_error,
            links=JobLinks.for_job(record.id, images),
        )


class CancelResult(BaseModel):
    id: str
    status: JobStatus
    detail: str


class ModelView(BaseModel):
    name: str
    key: str
    workers: int
    width: int = Field(description="native width")
    height: int = Field(description="native height")
    max_width: int = Field(description="largest width a request may ask of this model")
    max_height: int = Field(description="largest height a request may ask of this model")
    images_per_s: float | None = Field(description="the workers' reported throughput, summed")
    schedulers: list[str]
    schedules: list[ScheduleInfo]
    default_schedule: str | None
    olss_fallback: str | None = Field(
        None, description="the diffusers sampler an OLSS request without a schedule gets "
        "(auto-calibration off or failed); None: such a request is a 422"
    )
    olss_fallback_reason: str | None = Field(None, description="why it is served")


class CalibratingModelView(BaseModel):
    """A model whose live workers are all calibrating its OLSS schedules at start-up (a
    request for it is a 503 with ``Retry-After`` until one is ready)."""

    name: str
    key: str
    workers: int = Field(description="workers calibrating or waiting for the one that does")
    progress: CalibrationProgress | None = Field(
        description="the progress of the worker furthest along"
    )


class Limits(BaseModel):
    """The deployment's limits (settings); each model's sizes are in ``models``."""

    max_prompt_chars: int
    min_size: int
    max_width: int
    max_height: int
    max_size_factor: float
    max_steps: int
    max_num_images: int
    max_guidance_scale: float
    max_queue_depth: int
    sync_timeout_s: float
    job_ttl_s: int = Field(description="job records and events are kept this long")
    image_ttl_s: int = Field(description="images are kept this long after the job finished")
    delivered_image_ttl_s: int = Field(
        description="an image is kept this long once a sync reply or an image GET delivered it"
    )
    max_body_bytes: int
    sse_max_streams: int


class InfoView(BaseModel):
    """``GET /v1/info``."""

    version: str
    models: list[ModelView]
    calibrating: list[CalibratingModelView] = Field(
        default_factory=list, description="models not served yet: calibrating"
    )
    limits: Limits
    output_formats: list[str]
