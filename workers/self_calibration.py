"""Start-up self-calibration: a worker fits the OLSS schedules its model lacks before it serves.

When the registry holds no schedule for the worker's model (its identity,
:mod:`schedules.model_identity`) at the model's default guidance for one of
``OLSS_CALIBRATE_STEPS``, and ``OLSS_AUTO_CALIBRATE`` is on, the worker runs
:func:`schedules.calibration.calibrate` (the paper's recipe with this project's search: teacher
trajectories, closed-loop path search, held-out validation; Duan et al. 2023,
arXiv:2305.14677) on its own device before it reports ready, and writes the schedules into the
writable registry (``Settings.writable_schedule_dir``), so the next start preloads them.

**One replica calibrates, the others wait.** The first to take the model's
:class:`~workers.calibration_lock.CalibrationLock` calibrates, renewing the lock in a thread;
the others poll the registry folder and the lock, showing the holder's progress. If the holder
dies, its lock expires after ``OLSS_CALIBRATE_LOCK_TTL_S`` and a waiter takes over.

**Assumption: the replicas share the writable schedule folder** (the compose ``schedules``
volume, a ReadWriteMany volume in Kubernetes): a waiter loads what the holder wrote. A waiter
that does not share the holder's disk still ends up served: once the holder releases the lock
and the waiter's own folder still lacks the schedules, it takes the lock and calibrates itself
(the replicas then calibrate one after the other).

**Progress.** A forward pre-hook on the UNet counts the rows it evaluates; against the rows the
configuration implies (teacher runs, the search's evaluation budget, held-out runs) that gives
the fraction done and an ETA. The heartbeat carries it (state ``calibrating``) and the log gets
a line at INFO with phase, percentage and ETA every :data:`LOG_EVERY_S` seconds.

When auto-calibration is off or calibration fails, :meth:`SelfCalibration.ensure` says why, and
the worker serves :data:`olss_core.samplers.FALLBACK_SAMPLER` for OLSS requests it has no
schedule for.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from olss_core.keys import calibration_lock_key, worker_key
from olss_core.protocol import CalibrationProgress, WorkerInfo
from olss_core.redis_clients import SyncRedis
from olss_core.samplers import PEERS
from olss_core.settings import Settings
from schedules import ScheduleNotFound, ScheduleRegistry
from schedules.calibration import (
    DEFAULT_GUIDANCE_GRID,
    DEFAULT_MAX_EVALUATIONS,
    DEFAULT_NUM_VALIDATION,
    CalibrationConfig,
    calibrate,
    default_prompts,
)
from schedules.teachers import DEFAULT_TEACHER, parse_teacher
from workers.calibration_lock import CalibrationLock

log = logging.getLogger(__name__)

SHOW_EVERY_S = 1.0
"""The heartbeat's progress is updated at most this often."""
LOG_EVERY_S = 10.0
"""A progress line goes to the log this often."""
MAX_FRACTION = 0.99
"""The estimate stays below this until calibration returns."""

ShowProgress = Callable[[CalibrationProgress], None]


def missing_steps(
    registry: ScheduleRegistry, key: str, identity: str, steps: Sequence[int], guidance: float
) -> list[int]:
    """The step counts of ``steps`` with no schedule for the model near ``guidance``."""
    missing = []
    for k in steps:
        try:
            registry.get(key, k, guidance, identity=identity)
        except ScheduleNotFound:
            missing.append(k)
    return missing


def guidance_grid(settings: Settings, default_guidance: float) -> list[float]:
    """The calibrated guidance scales: ``OLSS_CALIBRATE_GUIDANCE`` (default the calibration
    library's grid) and the model's default guidance."""
    grid = settings.calibrate_guidance or list(DEFAULT_GUIDANCE_GRID)
    return sorted({float(g) for g in grid} | {float(default_guidance)})


def calibration_config(
    settings: Settings, steps: Sequence[int], default_guidance: float
) -> tuple[CalibrationConfig, list[str]]:
    """The :class:`CalibrationConfig` and prompts the settings ask for."""
    prompts = default_prompts()
    if settings.calibrate_prompts is not None:
        prompts = prompts[: settings.calibrate_prompts]
    config = CalibrationConfig(
        num_steps=list(steps),
        teacher=settings.calibrate_teacher or DEFAULT_TEACHER,
        guidance_scale=guidance_grid(settings, default_guidance),
        num_validation=(
            DEFAULT_NUM_VALIDATION if settings.calibrate_validation is None
            else settings.calibrate_validation
        ),
        max_evaluations=settings.calibrate_max_evaluations or DEFAULT_MAX_EVALUATIONS,
        batch_size=settings.calibrate_batch_size,
    )
    return config, prompts


def expected_rows(
    config: CalibrationConfig, num_prompts: int, teacher_steps: int
) -> tuple[int, int]:
    """``(teacher rows, all rows)``: UNet input rows (an example under classifier-free guidance
    is two) the teacher runs, and the whole run (the search at its full evaluation budget and
    the held-out runs of OLSS and each peer), estimated from ``config``."""
    scales = config.guidance_scales
    fit = num_prompts - config.num_validation
    teacher = search = heldout = 0
    for g, scale in enumerate(scales):
        rows_per_example = 2 if scale > 1.0 else 1
        mine = len(range(g, fit, len(scales)))
        teacher += (mine + config.num_validation) * teacher_steps * rows_per_example
        heldout += sum(config.num_validation * k * (1 + len(PEERS)) * rows_per_example
                       for k in config.step_counts)
    budget = config.max_evaluations or 0
    mean_rows = sum(2 if s > 1.0 else 1 for s in scales) / len(scales)
    search = int(budget * mean_rows)
    return teacher, teacher + search + heldout


class ProgressMeter:
    """Counts the UNet rows a calibration evaluates and turns them into progress."""

    def __init__(self, show: ShowProgress, steps: Sequence[int], teacher_rows: int,
                 total_rows: int, holder: str) -> None:
        self.show = show
        self.steps = list(steps)
        self.teacher_rows = teacher_rows
        self.total_rows = max(1, total_rows)
        self.holder = holder
        self.rows = 0
        self.started = time.monotonic()
        self._shown = self._logged = float("-inf")

    def progress(self, phase: str | None = None) -> CalibrationProgress:
        fraction = min(MAX_FRACTION, self.rows / self.total_rows)
        elapsed = time.monotonic() - self.started
        eta = elapsed * (1 - fraction) / fraction if fraction > 0.01 else None
        if phase is None:
            phase = "teacher" if self.rows < self.teacher_rows else "search"
        return CalibrationProgress(phase=phase, fraction=round(fraction, 4),
                                   eta_s=None if eta is None else round(eta, 1),
                                   steps=self.steps, holder=self.holder)

    def count(self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """UNet forward pre-hook: count the rows of its input sample."""
        sample = args[0] if args else kwargs.get("sample")
        self.rows += int(sample.shape[0]) if sample is not None else 0
        now = time.monotonic()
        if now - self._shown >= SHOW_EVERY_S:
            self._shown = now
            self.report(log_now=now - self._logged >= LOG_EVERY_S)

    def report(self, phase: str | None = None, log_now: bool = True) -> None:
        progress = self.progress(phase)
        self.show(progress)
        if log_now:
            self._logged = time.monotonic()
            eta = "unknown" if progress.eta_s is None else f"{progress.eta_s:.0f} s"
            log.info("calibrating steps %s: %s %.0f%%, ETA %s", self.steps, progress.phase,
                     100 * progress.fraction, eta)


@dataclass(frozen=True)
class ModelToCalibrate:
    """A loaded model as calibration sees it: the pipeline, what ``from_pretrained`` loaded,
    its registry key and identity, and its default guidance."""

    pipe: Any
    source: str
    key: str
    identity: str
    default_guidance: float


class SelfCalibration:
    """Makes sure the registry serves a model at ``OLSS_CALIBRATE_STEPS`` before it serves."""

    def __init__(
        self, settings: Settings, client: SyncRedis, worker_id: str, show: ShowProgress,
        poll_s: float | None = None,
    ) -> None:
        self.settings = settings
        self.redis = client
        self.worker_id = worker_id
        self.show = show
        self.poll_s = poll_s or min(2.0, settings.calibrate_lock_ttl_s / 3)

    def ensure(self, model: ModelToCalibrate, registry: ScheduleRegistry) -> str | None:
        """Calibrate (or wait for the replica that does) what the registry lacks; ``None``
        when every configured step count is served, else why not (the worker then serves the
        fallback sampler)."""
        steps = self.settings.calibrate_steps
        missing = missing_steps(registry, model.key, model.identity, steps,
                                model.default_guidance)
        if not missing:
            return None
        what = (f"no OLSS schedule for {model.key} ({model.identity}) with steps "
                f"{', '.join(map(str, missing))} at guidance {model.default_guidance:g}")
        if not self.settings.auto_calibrate:
            return f"{what}, and OLSS_AUTO_CALIBRATE is off"
        log.info("%s: calibrating before serving", what)
        lock = CalibrationLock(self.redis, calibration_lock_key(model.key, model.identity),
                               self.worker_id, self.settings.calibrate_lock_ttl_s)
        while True:
            if lock.acquire():
                with lock.held():
                    # The last holder may have written them just before it let go.
                    missing = missing_steps(registry, model.key, model.identity, steps,
                                            model.default_guidance)
                    if not missing:
                        return None
                    try:
                        self._calibrate(model, registry, missing)
                    except Exception as error:
                        log.exception("calibration of %s failed", model.key)
                        return f"calibration failed: {type(error).__name__}: {error}"
                return None
            self._wait_for(lock.holder(), missing)
            missing = missing_steps(registry, model.key, model.identity, steps,
                                    model.default_guidance)
            if not missing:
                log.info("schedules for steps %s are in the registry now", steps)
                return None

    def _wait_for(self, holder: str | None, steps: list[int]) -> None:
        """Show the holder's progress (phase ``waiting``) and sleep one poll."""
        progress = self._holders_progress(holder)
        self.show(CalibrationProgress(
            phase="waiting", fraction=progress.fraction if progress else 0.0,
            eta_s=progress.eta_s if progress else None, steps=steps, holder=holder,
        ))
        time.sleep(self.poll_s)

    def _holders_progress(self, holder: str | None) -> CalibrationProgress | None:
        if holder is None:
            return None
        raw = self.redis.get(worker_key(holder))
        return None if raw is None else WorkerInfo.model_validate_json(raw).calibration

    def _calibrate(self, model: ModelToCalibrate, registry: ScheduleRegistry,
                   steps: list[int]) -> None:
        config, prompts = calibration_config(self.settings, steps, model.default_guidance)
        teacher_steps = parse_teacher(config.teacher, dict(model.pipe.scheduler.config)).num_steps
        teacher_rows, total_rows = expected_rows(config, len(prompts), teacher_steps)
        meter = ProgressMeter(self.show, steps, teacher_rows, total_rows, self.worker_id)
        log.info("calibrating %s for steps %s at guidance %s: %d prompts, teacher %s, "
                 "at most %s search evaluations", model.key, steps, config.guidance_scales,
                 len(prompts), config.teacher, config.max_evaluations)
        meter.report("teacher")
        hook = model.pipe.unet.register_forward_pre_hook(meter.count, with_kwargs=True)
        try:
            schedules = calibrate(model.pipe, prompts, config, model_id=model.source,
                                  progress=False, log=log.debug)
        finally:
            hook.remove()
        meter.report("writing")
        for schedule in schedules:
            path = registry.put(replace(schedule, model_identity=model.identity))
            log.info("wrote %s", path)
        seconds = time.monotonic() - meter.started
        log.info("calibrated %d schedules for %s in %.1f s", len(schedules), model.key, seconds)
