"""Quick OLSS schedules for the tiny test pipeline (a few seconds on a CPU)."""

from __future__ import annotations

from pathlib import Path

from tests.support.torch_threads import single_torch_thread

TEST_STEPS = (4, 5)
TEST_GUIDANCE = 7.5


def calibrate_test_schedules(model_dir: Path, out_dir: Path) -> list[str]:
    """Fit 4- and 5-step schedules (teacher DDIM-10, 6 prompts, no validation) into
    ``out_dir``; returns their names. Quality is irrelevant: the model has random weights."""
    from diffusers import StableDiffusionPipeline

    from schedules import ScheduleRegistry
    from schedules.calibrate import calibrate, default_prompts

    pipe = StableDiffusionPipeline.from_pretrained(model_dir)
    with single_torch_thread():
        schedules = calibrate(
            pipe, default_prompts()[:6], num_steps=list(TEST_STEPS), teacher="ddim:10",
            guidance_scale=TEST_GUIDANCE, num_validation=0, method="paper", progress=False,
        )
    registry = ScheduleRegistry(out_dir)
    return [registry.put(schedule).stem for schedule in schedules]
