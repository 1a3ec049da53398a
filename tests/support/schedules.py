"""Schedules for tests: a small valid one built by hand, the names of the shipped ones, and quick
OLSS schedules for the tiny test pipeline (a few seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

from schedules.registry import BUILTIN_DIR, ScheduleRegistry
from schedules.schedule_file import FitReport, HeldoutReport, Method, Schedule, TeacherInfo
from tests.support.torch_threads import single_torch_thread

TEST_STEPS = (4, 5)
TEST_GUIDANCE = 7.5


def build_schedule(steps: int = 3, guidance: float = 7.5, model: str = "tiny-sd") -> Schedule:
    """A valid ``steps``-step schedule with made-up coefficients and a held-out report."""
    return Schedule(
        model_id=model,
        teacher=TeacherInfo("DDIMScheduler", {"num_train_timesteps": 1000}, 100),
        guidance_scale=guidance,
        resolution=(32, 32),
        num_examples=4,
        timesteps=[991 - 200 * i for i in range(steps)],
        coefficients=[
            [1.0 - 0.1 * i] + [0.01 * (j + 1) for j in range(i + 1)] for i in range(steps)
        ],
        init_noise_sigma=1.0,
        method=Method.CLOSED_LOOP,
        fit_report=FitReport(
            path=[20 * i for i in range(steps)],
            step_errors=[0.1] * steps,
            condition_numbers=[10.0] * steps,
            heldout=HeldoutReport(4, 0.05, {"unipc": 0.2}, "olss", "OLSS is the best"),
        ),
    )


def shipped_name(model: str, steps: int, guidance: float) -> str:
    """The name of the built-in registry's schedule for ``model`` (a model key) at ``steps`` and
    exactly ``guidance`` (``olss-digits-<digest>__5steps__cfg4__closed-loop``)."""
    (name,) = [
        e.name
        for e in ScheduleRegistry(BUILTIN_DIR).list()
        if (e.model, e.steps, e.guidance, e.method) == (model, steps, guidance, Method.CLOSED_LOOP)
    ]
    return name


def calibrate_test_schedules(model_dir: Path, out_dir: Path) -> list[str]:
    """Fit 4- and 5-step schedules (teacher DDIM-10, 6 prompts, no validation) into
    ``out_dir``; returns their names. Quality is irrelevant: the model has random weights."""
    from diffusers import StableDiffusionPipeline

    from schedules import ScheduleRegistry
    from schedules.calibration import CalibrationConfig, calibrate, default_prompts

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    config = CalibrationConfig(
        num_steps=TEST_STEPS,
        teacher="ddim:10",
        guidance_scale=TEST_GUIDANCE,
        num_validation=0,
        method=Method.PAPER,
    )
    with single_torch_thread():
        schedules = calibrate(pipe, default_prompts()[:6], config, progress=False)
    registry = ScheduleRegistry(out_dir)
    return [registry.put(schedule).stem for schedule in schedules]
