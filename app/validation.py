"""The validation stage: a ``GenerateRequest`` plus the live workers' heartbeats -> ``JobSpec``.

Applies the configured limits and the model's own (each 422 names the field and the limit),
fills the model's defaults, picks the OLSS schedule and draws a seed. Only its output reaches
the queue. The same limits are stated in ``/v1/info`` and in the served OpenAPI schema.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.errors import InvalidRequest
from app.fleet import Fleet
from app.schemas import SIZE_STEP, GenerateRequest
from olss_core.guidance import nearest_guidance
from olss_core.protocol import SEED_RANGE, JobSpec, OutputFormat, ScheduleInfo, WorkerInfo
from olss_core.samplers import OLSS
from olss_core.settings import Settings


@dataclass(frozen=True)
class ModelLimits:
    """The largest image a model takes: what its workers report, else ``OLSS_MAX_SIZE_FACTOR``
    times its native size; never past ``OLSS_MAX_WIDTH`` / ``OLSS_MAX_HEIGHT``.

    A denoising step costs about linearly in pixels, so a side limit bounds a step's cost to
    ``factor**2`` times the native one (olss-digits, 16x16 native: at most 32x32).
    """

    max_width: int
    max_height: int

    @classmethod
    def of(cls, worker: WorkerInfo, settings: Settings) -> ModelLimits:
        def side(native: int, reported: int | None, cap: int) -> int:
            derived = int(native * settings.max_size_factor) // SIZE_STEP * SIZE_STEP
            return max(settings.min_size, min(reported or derived, cap))

        return cls(
            max_width=side(worker.width, worker.max_width, settings.max_width),
            max_height=side(worker.height, worker.max_height, settings.max_height),
        )


def check_limits(body: GenerateRequest, settings: Settings) -> None:
    """Raise ``InvalidRequest`` for the first field outside the configured limits."""
    for field, text in (("prompt", body.prompt), ("negative_prompt", body.negative_prompt)):
        if text is not None and len(text) > settings.max_prompt_chars:
            raise InvalidRequest(
                f"{field}: at most {settings.max_prompt_chars} characters (got {len(text)})"
            )
    if body.steps is not None and body.steps > settings.max_steps:
        raise InvalidRequest(f"steps: at most {settings.max_steps} (got {body.steps})")
    if body.num_images > settings.max_num_images:
        raise InvalidRequest(
            f"num_images: at most {settings.max_num_images} (got {body.num_images})"
        )
    guidance = body.guidance_scale
    if guidance is not None and guidance > settings.max_guidance_scale:
        raise InvalidRequest(
            f"guidance_scale: at most {settings.max_guidance_scale} (got {guidance})"
        )


def check_size(body: GenerateRequest, worker: WorkerInfo, settings: Settings) -> None:
    """Raise ``InvalidRequest`` for a width or height outside the model's limits."""
    limits = ModelLimits.of(worker, settings)
    for field, value, limit in (
        ("width", body.width, limits.max_width),
        ("height", body.height, limits.max_height),
    ):
        if value is not None and not settings.min_size <= value <= limit:
            raise InvalidRequest(
                f"{field}: must be between {settings.min_size} and {limit} for model "
                f"{worker.model_key!r} (got {value})"
            )


def _describe(schedules: list[ScheduleInfo]) -> str:
    if not schedules:
        return "none (run `olss calibrate`, or choose another scheduler)"
    return ", ".join(f"steps={s.steps} guidance_scale={s.guidance_scale:g}" for s in schedules)


def pick_schedule(
    worker: WorkerInfo, steps: int | None, guidance: float | None
) -> ScheduleInfo:
    """The calibrated OLSS schedule for ``steps`` and ``guidance`` (defaults: the model's).

    Guidance matches by the one rule of :func:`olss_core.guidance.nearest_guidance`.
    """
    default = next((s for s in worker.schedules if s.name == worker.default_schedule), None)
    matches = [s for s in worker.schedules if steps is None or s.steps == steps]
    if guidance is not None:
        nearest = nearest_guidance({s.guidance_scale for s in matches}, guidance)
        matches = [s for s in matches if s.guidance_scale == nearest]
    if not matches:
        asked = {"steps": steps, "guidance_scale": guidance}
        fields = " and ".join(name for name, value in asked.items() if value is not None)
        wanted = " ".join(f"{name}={value:g}" for name, value in asked.items() if value is not None)
        raise InvalidRequest(
            f"{fields or 'scheduler'}: no OLSS schedule for model {worker.model_key!r}"
            f"{' with ' + wanted if wanted else ''}; available: {_describe(worker.schedules)}"
        )
    if default in matches:
        return default
    return min(matches, key=lambda s: (s.steps, s.guidance_scale))


def build_job_spec(
    body: GenerateRequest, fleet: Fleet, settings: Settings, output_format: OutputFormat
) -> JobSpec:
    """Validate ``body`` against the limits and the model's worker; resolve every default."""
    check_limits(body, settings)
    worker = fleet.find(body.model, default=settings.model)
    check_size(body, worker, settings)
    if body.scheduler == OLSS:
        schedule = pick_schedule(worker, body.steps, body.guidance_scale)
        steps, guidance = schedule.steps, schedule.guidance_scale
    else:
        steps = body.steps or worker.default_steps
        guidance = body.guidance_scale
        if guidance is None:
            guidance = worker.default_guidance_scale
    return JobSpec(
        model=worker.model_key,
        prompt=body.prompt,
        negative_prompt=body.negative_prompt,
        width=body.width or worker.width,
        height=body.height or worker.height,
        steps=steps,
        guidance_scale=guidance,
        seed=secrets.randbelow(SEED_RANGE) if body.seed is None else body.seed,
        num_images=body.num_images,
        scheduler=body.scheduler,
        output_format=output_format,
        preview_every=body.preview_every,
    )
