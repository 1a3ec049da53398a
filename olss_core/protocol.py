"""The records both sides exchange through Redis: the job spec and record, events, heartbeats.

Imports neither torch nor FastAPI. Key names are in :mod:`olss_core.keys`, statuses and
transitions in :mod:`olss_core.job_states`.
"""

from __future__ import annotations

import math
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
SIZE_STEP = 8
"""Widths and heights are multiples of this (the VAE's downsampling factor)."""


def max_side(native: int, factor: float) -> int:
    """The largest side a model takes by default: ``factor`` times its native side, down to a
    multiple of :data:`SIZE_STEP`. A denoising step costs about linearly in pixels, so this
    bounds a step's cost to ``factor**2`` times the native one."""
    return max(SIZE_STEP, int(native * factor) // SIZE_STEP * SIZE_STEP)


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
    guidance_scale: float = Field(description="the guidance scale it was calibrated at")
    served_guidance: list[float] = Field(
        default_factory=list, description="[lowest, highest] guidance scale an OLSS request at "
        "these steps may ask for (olss_core.guidance): the calibrated schedule, a blend of the "
        "two calibrated around it, or the nearest; the job's `schedule` names which. Empty: "
        "only near guidance_scale (a worker from before)"
    )


class WorkerState(StrEnum):
    """What a worker is doing, as its heartbeat says: the gateway sends jobs to ``ready`` ones
    only and counts the others apart (``app.fleet``)."""

    LOADING = "loading"  # loading its model and warming up
    CALIBRATING = "calibrating"  # fitting its model's OLSS schedules before it serves
    READY = "ready"  # serving its model's queue
    DRAINING = "draining"  # stopping: finishing the running batch, handing back the rest
    STALLED = "stalled"  # alive, but its last read of its queue failed (``queue_error``)


class CalibrationProgress(BaseModel):
    """How far a worker's start-up calibration of its model's OLSS schedules is
    (``workers.self_calibration``); a worker waiting for another one's shows that one's."""

    phase: str = Field(description="teacher (recording the teacher's trajectories), search "
                       "(fitting and validating schedules), writing, or waiting (for the worker "
                       "named in holder)")
    fraction: float = Field(ge=0, le=1, description="share of the work done (an estimate)")
    eta_s: float | None = Field(None, ge=0, description="seconds left (an estimate; None: not "
                                "known yet)")
    steps: list[int] = Field(default_factory=list, description="step counts being calibrated")
    holder: str | None = Field(None, description="the worker id that calibrates")


CALIBRATION_RETRY_AFTER_S = 10
"""``Retry-After`` for a calibrating model whose ETA is not known yet."""
MAX_CALIBRATION_RETRY_AFTER_S = 60


def calibration_retry_after_s(progress: CalibrationProgress | None) -> int:
    """Seconds a client should wait for a calibrating model (``Retry-After`` of the worker's
    ``/readyz`` and of the gateway's 503): the ETA, within [1, 60] (10 while unknown)."""
    if progress is None or progress.eta_s is None:
        return CALIBRATION_RETRY_AFTER_S
    return max(1, min(MAX_CALIBRATION_RETRY_AFTER_S, math.ceil(progress.eta_s)))


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
    calibration: CalibrationProgress | None = Field(
        None, description="progress of the start-up calibration (state calibrating)"
    )
    model_identity: str | None = Field(
        None, description="what the model's schedules are keyed by (schedules.model_identity)"
    )
    olss_fallback: str | None = Field(
        None, description="the diffusers sampler an OLSS request gets at a step count without "
        "a schedule (None: such a request is refused)"
    )
    olss_fallback_reason: str | None = Field(
        None, description="why the worker serves olss_fallback"
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
