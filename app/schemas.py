"""HTTP request and response bodies of the gateway (their JSON schema is the OpenAPI at /docs).

``GenerateRequest`` checks types and static bounds only; ``app.validation`` applies the
configured limits and the model's schedules and turns it into a queueable ``JobSpec``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from olss_core.job_states import JobStatus
from olss_core.protocol import OutputFormat, ScheduleInfo, Timings
from olss_core.samplers import OLSS, SchedulerName

MAX_SEED = 2**32 - 1


class GenerateRequest(BaseModel):
    """Body of ``POST /generate``. Omitted fields take the model's defaults."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, description="limited to OLSS_MAX_PROMPT_CHARS characters")
    negative_prompt: str | None = None
    width: int | None = Field(None, gt=0, description="multiple of 8; default: the model's")
    height: int | None = Field(None, gt=0, description="multiple of 8; default: the model's")
    steps: int | None = Field(None, ge=1, description="default: the model's default schedule")
    guidance_scale: float | None = Field(None, ge=0, description="default: the schedule's")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="random when absent")
    num_images: int = Field(1, ge=1, description="limited to OLSS_MAX_NUM_IMAGES")
    scheduler: SchedulerName = OLSS
    output_format: OutputFormat | None = Field(None, description="default: from Accept, else png")
    model: str | None = Field(None, description="default: OLSS_MODEL or the one model served")


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
    links: JobLinks


class CancelResult(BaseModel):
    id: str
    status: JobStatus
    detail: str


class ModelView(BaseModel):
    name: str
    key: str
    workers: int
    width: int
    height: int
    schedulers: list[str]
    schedules: list[ScheduleInfo]
    default_schedule: str | None


class Limits(BaseModel):
    max_prompt_chars: int
    min_size: int
    max_width: int
    max_height: int
    max_steps: int
    max_num_images: int
    max_guidance_scale: float
    max_queue_depth: int
    sync_timeout_s: float


class InfoView(BaseModel):
    """``GET /v1/info``."""

    version: str
    models: list[ModelView]
    limits: Limits
    output_formats: list[str]
