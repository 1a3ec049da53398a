"""The records both sides exchange through Redis: the job spec and record, events, heartbeats.

Imports neither torch nor FastAPI. Key names are in :mod:`olss_core.keys`, statuses and
transitions in :mod:`olss_core.job_states`.
"""

from __future__ import annotations

import time
from enum import Enum, StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from olss_core.job_states import JobStatus
from olss_core.samplers import OLSS, SchedulerName

OUTPUT_FORMATS = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
OutputFormat = Literal["png", "jpeg", "webp"]
SEED_RANGE = 2**32
"""Seeds are 0 .. SEED_RANGE - 1."""


def now() -> float:
    """Wall-clock seconds; every timestamp in a record uses it."""
    return time.time()


class EventType(StrEnum):
    QUEUED = "queued"
    STARTED = "started"
    STEP = "step"
    FINISHED = "finished"


class WebhookEvent(StrEnum):
    """What a webhook may be sent for (Replicate's ``webhook_events_filter`` values): the job
    started, its images are ready, it reached a final state (succeeded, failed or canceled)."""

    START = "start"
    OUTPUT = "output"
    COMPLETED = "completed"


class WebhookTarget(BaseModel):
    """A job's webhook: where it goes, for which events, and the base URL of the links it
    carries (the one the job's request was sent to)."""

    model_config = ConfigDict(frozen=True)

    url: str
    events: tuple[WebhookEvent, ...]
    base_url: str


class Preview(BaseModel):
    """A small picture of a running job's latents after one step (a ``step`` event carries it
    when the job asked for previews; ``workers.previews`` makes it)."""

    content_type: str
    width: int
    height: int
    data_base64: str


class JobSpec(BaseModel):
    """A validated generation request: the only thing that is ever queued.

    Built by ``app.validation`` with every default resolved (model key, steps, seed).
    """

    model_config = ConfigDict(frozen=True)

    model: str
    prompt: str
    negative_prompt: str | None = None
    width: int
    height: int
    steps: int
    guidance_scale: float
    seed: int
    num_images: int = 1
    scheduler: SchedulerName = OLSS
    output_format: OutputFormat = "png"
    preview_every: int = Field(
        0, ge=0, description="a preview on every n-th step event (0: none)"
    )

    @property
    def seeds(self) -> list[int]:
        """One seed per image: ``seed``, ``seed + 1``, ... modulo ``SEED_RANGE`` (so every seed
        stays in the range a request accepts)."""
        return [(self.seed + i) % SEED_RANGE for i in range(self.num_images)]

    @property
    def content_type(self) -> str:
        return OUTPUT_FORMATS[self.output_format]


class Timings(BaseModel):
    """Seconds. ``queue``: enqueue to start; ``inference``: the batch's encode+denoise+decode;
    ``total``: enqueue to result stored."""

    queue: float
    inference: float
    total: float
    encode: float
    denoise: float
    decode: float
    batch_size: int = Field(description="images in the batch this job ran in")


class JobRecord(BaseModel):
    """The job hash ``olss:job:{id}``; each field is stored as one hash field (JSON for nested)."""

    id: str
    model: str
    status: JobStatus = JobStatus.QUEUED
    spec: JobSpec
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    attempts: int = 0
    worker: str | None = None
    step: int = 0
    total_steps: int = 0
    schedule: str | None = None
    timings: Timings | None = None
    error: str | None = None
    error_type: str | None = None
    owner: str | None = Field(
        None, description="digest of the API key that created the job (None without auth)"
    )
    webhook: WebhookTarget | None = None
    webhook_failures: int = Field(0, description="webhook events given up on (app.webhooks)")
    webhook_error: str | None = Field(None, description="the last failed webhook attempt")

    @classmethod
    def fields(cls, **values: Any) -> dict[str, str]:
        """Encode some fields for HSET; an unknown field name is a programming error."""
        unknown = set(values) - set(cls.model_fields)
        if unknown:
            raise KeyError(f"not JobRecord fields: {sorted(unknown)}")
        return {name: _encode(value) for name, value in values.items()}

    def to_hash(self) -> dict[str, str]:
        return self.fields(**{name: getattr(self, name) for name in type(self).model_fields})

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> JobRecord:
        values: dict[str, Any] = {}
        for name, raw in data.items():
            if name not in cls.model_fields or raw == "":
                continue
            values[name] = raw
        for nested in _NESTED:
            if nested in values:
                values[nested] = _NESTED[nested].model_validate_json(values[nested])
        return cls.model_validate(values)


_NESTED: dict[str, type[BaseModel]] = {
    "spec": JobSpec, "timings": Timings, "webhook": WebhookTarget,
}


def _encode(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, BaseModel):
        return value.model_dump_json()
    if isinstance(value, Enum):
        return str(value.value)
    return str(value)


class JobEvent(BaseModel):
    """One entry of ``olss:events:{id}`` (stored as its JSON in field ``data``)."""

    type: EventType
    at: float = Field(default_factory=now)
    status: JobStatus | None = None
    step: int | None = None
    total: int | None = None
    attempt: int | None = None
    error: str | None = None
    preview: Preview | None = None

    def to_fields(self) -> dict[str, str]:
        return {"type": self.type.value, "data": self.model_dump_json(exclude_none=True)}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobEvent:
        return cls.model_validate_json(fields["data"])


class ScheduleInfo(BaseModel):
    """One OLSS schedule a worker serves."""

    name: str
    steps: int
    guidance_scale: float


class WorkerState(StrEnum):
    """What a worker is doing, as its heartbeat says: the gateway sends jobs to ``ready`` ones
    only and counts the others apart (``app.fleet``)."""

    LOADING = "loading"  # loading its model and warming up
    CALIBRATING = "calibrating"  # fitting its model's OLSS schedules before it serves
    READY = "ready"  # serving its model's queue
    DRAINING = "draining"  # stopping: finishing the running batch, handing back the rest
    STALLED = "stalled"  # alive, but its last read of its queue failed (``queue_error``)


class WorkerInfo(BaseModel):
    """A worker's heartbeat: what it serves, so the gateway validates without loading schedules.

    A worker beats from the start of loading; what only the loaded model knows (schedules,
    samplers, native size) is empty or ``None`` until it is ``ready``.
    """

    worker_id: str
    state: WorkerState = WorkerState.READY
    queue_error: str | None = Field(
        None, description="the Redis error of the worker's last round of serving its queue "
        "(state stalled); None while it reads"
    )
    model: str = Field(description="the model as configured (hub id, folder or embedded name)")
    model_key: str = Field(description="registry key; names the job stream")
    device: str
    schedules: list[ScheduleInfo] = Field(default_factory=list)
    default_schedule: str | None = None
    default_steps: int = Field(description="steps for the other schedulers when not given")
    default_guidance_scale: float = Field(description="guidance when not given (non-OLSS)")
    schedulers: list[str] = Field(default_factory=list)
    width: int | None = Field(None, description="the model's native image width (None "
                              "until it is loaded)")
    height: int | None = None
    max_width: int | None = Field(
        None, description="largest width the worker takes (None: the gateway derives it from "
        "width and OLSS_MAX_SIZE_FACTOR)"
    )
    max_height: int | None = Field(None, description="largest height, as max_width")
    images_per_s: float | None = Field(
        None, description="measured throughput of this worker (None: not measured yet)"
    )
    max_batch_size: int
    metrics_port: int
    pid: int
    host: str
    started_at: float
    version: str

    def serves(self, model: str) -> bool:
        return model in (self.model, self.model_key)

    @property
    def ready(self) -> bool:
        """The worker takes jobs now."""
        return self.state is WorkerState.READY
