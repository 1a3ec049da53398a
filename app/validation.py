"""The validation stage: a ``GenerateRequest`` plus the live workers' heartbeats -> ``JobSpec``.

Applies the configured limits and the model's own (each 422 names the field and the limit),
fills the model's defaults, picks the OLSS step count and guidance and draws a seed. Only its
output reaches the queue. The same limits are stated in ``/v1/info`` and in the served OpenAPI
schema.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from app.errors import InvalidRequest
from app.fleet import Fleet
from app.schemas import GenerateRequest
from olss_core.guidance import serves_guidance
from olss_core.protocol import (
    SEED_RANGE,
    JobSpec,
    OutputFormat,
    ScheduleInfo,
    WorkerInfo,
    max_side,
)
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
            derived = max_side(native, settings.max_size_factor)
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
) -> tuple[int, float]:
    """``(steps, guidance)`` of the OLSS job for the requested ones (defaults: the model's).

    A step count serves the guidance scales of the one rule,
    :func:`olss_core.guidance.serves_guidance` (the worker builds the schedule for the scale:
    calibrated, blended or nearest). Without a guidance scale, the job takes the calibrated one
    of the model's default schedule (or of the fewest steps asked for).
    """
    default = next((s for s in worker.schedules if s.name == worker.default_schedule), None)
    by_steps: dict[int, list[ScheduleInfo]] = {}
    for s in worker.schedules:
        if steps is None or s.steps == steps:
            by_steps.setdefault(s.steps, []).append(s)
    if guidance is not None:
        by_steps = {
            k: v for k, v in by_steps.items()
            if serves_guidance((s.guidance_scale for s in v), guidance)
        }
    if not by_steps:
        asked = {"steps": steps, "guidance_scale": guidance}
        fields = " and ".join(name for name, value in asked.items() if value is not None)
        wanted = " ".join(f"{name}={value:g}" for name, value in asked.items() if value is not None)
        raise InvalidRequest(
            f"{fields or 'scheduler'}: no OLSS schedule for model {worker.model_key!r}"
            f"{' with ' + wanted if wanted else ''}; available: {_describe(worker.schedules)}"
        )
    if default is not None and default.steps in by_steps:
        chosen = default
    else:
        fewest = min(by_steps)
        target = worker.default_guidance_scale if guidance is None else guidance
        chosen = min(by_steps[fewest], key=lambda s: (abs(s.guidance_scale - target),
                                                      s.guidance_scale))
    return chosen.steps, chosen.guidance_scale if guidance is None else guidance


def olss_job(worker: WorkerInfo, body: GenerateRequest) -> tuple[int, float] | None:
    """``pick_schedule``'s steps and guidance; ``None`` when no schedule serves the request and
    the worker serves it with its fallback sampler (``WorkerInfo.olss_fallback``: auto-
    calibration off or failed), which takes the diffusers samplers' defaults."""
    try:
        return pick_schedule(worker, body.steps, body.guidance_scale)
    except InvalidRequest:
        if worker.olss_fallback is None:
            raise
        return None


def build_job_spec(
    body: GenerateRequest, fleet: Fleet, settings: Settings, output_format: OutputFormat
) -> JobSpec:
    """Validate ``body`` against the limits and the model's worker; resolve every default."""
    check_limits(body, settings)
    worker = fleet.find(body.model, default=settings.model,
                        accept_sleeping=settings.accept_sleeping_models)
    check_size(body, worker, settings)
    olss = olss_job(worker, body) if body.scheduler == OLSS else None
    if olss is not None:
        steps, guidance = olss
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
