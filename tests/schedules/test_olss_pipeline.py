"""OLSS inside the tiny StableDiffusionPipeline: recording, exact teacher reproduction, images."""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from schedules import OLSSScheduler, TrajectoryRecorder, search
from schedules.calibration import (
    DEFAULT_BATCH_SIZE,
    CalibrationConfig,
    calibrate,
    default_batch_size,
    record_teacher,
)
from schedules.teachers import parse_teacher

PROMPTS = ["a red cat", "a blue dog"]
SIZE = 16  # pixels: 2x2 latents keep the CPU cost tiny


def generate(pipe, steps: int, output_type: str = "latent"):
    return pipe(
        PROMPTS,
        num_inference_steps=steps,
        guidance_scale=7.5,
        height=SIZE,
        width=SIZE,
        generator=torch.Generator().manual_seed(0),
        output_type=output_type,
    ).images


def test_tiny_pipeline_reloads_with_from_pretrained(loaded_pipeline) -> None:
    assert isinstance(loaded_pipeline, StableDiffusionPipeline)
    assert isinstance(loaded_pipeline.scheduler, DDIMScheduler)
    assert loaded_pipeline.unet.config.sample_size == 16


def test_olss_on_all_teacher_steps_reproduces_ddim_in_the_pipeline(loaded_pipeline) -> None:
    pipe = loaded_pipeline
    original = pipe.scheduler
    recorder = TrajectoryRecorder(DDIMScheduler.from_config(original.config))
    try:
        pipe.scheduler = recorder
        teacher = generate(pipe, 6)
        traj = recorder.trajectories()
        assert traj.outputs.shape[:2] == (6, 2)
        schedule = search(traj, num_steps=6, method="paper")
        pipe.scheduler = OLSSScheduler.from_schedule(schedule)
        olss = generate(pipe, 6)
        error = float((olss - teacher).norm() / teacher.norm())
        assert error < 1e-5, error
        # Images decode to finite pixels, batch 2 with classifier-free guidance; twice in a row.
        short = search(traj, num_steps=3, method="uniform")
        pipe.scheduler = OLSSScheduler.from_schedule(short)
        images = generate(pipe, 3, output_type="np")
        assert images.shape == (2, SIZE, SIZE, 3) and np.isfinite(images).all()
        np.testing.assert_array_equal(generate(pipe, 3, output_type="np"), images)
    finally:
        pipe.scheduler = original


def test_calibration_model_fn_reproduces_the_pipeline_guidance(loaded_pipeline) -> None:
    teacher = parse_teacher("ddim:3", loaded_pipeline.scheduler.config)
    traj, model_fn = record_teacher(
        loaded_pipeline, PROMPTS, teacher, 7.5, 0, SIZE, SIZE, batch_size=2, progress=False
    )
    assert isinstance(loaded_pipeline.scheduler, DDIMScheduler)  # restored
    assert traj.conditions == tuple(PROMPTS) and traj.guidance_scale == 7.5
    for i in range(teacher.num_steps):
        torch.testing.assert_close(
            model_fn(traj.samples[i], traj.timestep(i)), traj.outputs[i], rtol=1e-5, atol=1e-6
        )
    # The model of a subset of the examples is the same model on those examples (a UNet batch
    # of one rounds differently from a batch of two in float32).
    subset = torch.tensor([1])
    torch.testing.assert_close(
        model_fn.select(subset)(traj.samples[2][subset], traj.timestep(2)),
        traj.outputs[2][subset],
        rtol=1e-3,
        atol=2e-5,
    )
    assert model_fn.evaluations == 2 * teacher.num_steps


def test_default_teacher_runs_in_the_pipeline_down_to_t_zero(loaded_pipeline) -> None:
    """The default teacher (DPM-Solver++(3M)) gets its evenly spaced timesteps ending at 0
    through the pipeline's ``timesteps`` argument, and the recording keeps them."""
    teacher = parse_teacher("dpmsolver++3m:12", loaded_pipeline.scheduler.config)
    assert teacher.timesteps is not None and teacher.timesteps[0] == 999
    assert teacher.timesteps[-1] == 0 and len(teacher.timesteps) == 12
    traj, _ = record_teacher(
        loaded_pipeline, PROMPTS, teacher, 7.5, 0, SIZE, SIZE, batch_size=2, progress=False
    )
    assert [traj.timestep(i) for i in range(traj.num_steps)] == teacher.timesteps
    assert traj.teacher_class == "DPMSolverMultistepScheduler"
    assert traj.teacher_config["solver_order"] == 3


def test_an_example_s_teacher_noise_is_its_seed_s_whatever_the_batch(loaded_pipeline) -> None:
    teacher = parse_teacher("ddim:2", loaded_pipeline.scheduler.config)
    both, _ = record_teacher(
        loaded_pipeline, PROMPTS, teacher, 7.5, [11, 5], SIZE, SIZE, batch_size=2, progress=False
    )
    alone, _ = record_teacher(
        loaded_pipeline, PROMPTS[1:], teacher, 7.5, 5, SIZE, SIZE, batch_size=1, progress=False
    )
    torch.testing.assert_close(both.samples[0][1:], alone.samples[0], rtol=0, atol=0)
    assert not torch.equal(both.samples[0][0], both.samples[0][1])


def test_held_out_prompts_ride_in_the_teacher_calls_of_the_fitted_ones(loaded_pipeline) -> None:
    """One guidance scale, 4 fitted and 2 held-out prompts: every teacher step is one UNet call
    on all 6 examples (12 rows with CFG), not one call for each part."""
    prompts = [f"prompt {n}" for n in range(6)]
    config = CalibrationConfig(num_steps=2, teacher="ddim:4", guidance_scale=7.5,
                               num_validation=2, method="uniform", height=SIZE, width=SIZE)
    rows: list[int] = []
    hook = loaded_pipeline.unet.register_forward_pre_hook(
        lambda _module, args: rows.append(args[0].shape[0])
    )
    try:
        schedules = calibrate(loaded_pipeline, prompts, config, progress=False)
    finally:
        hook.remove()
    assert rows.count(12) == 4 and rows[:4] == [12] * 4  # the teacher's 4 steps come first
    assert schedules[0].fit_report.heldout is not None


def test_the_default_batch_shrinks_as_the_images_grow() -> None:
    assert default_batch_size(512, 512) == DEFAULT_BATCH_SIZE == 24
    assert default_batch_size(768, 768) == 10 and default_batch_size(1024, 1024) == 6
    assert default_batch_size(4096, 4096) == 1 and default_batch_size(64, 64) > 24
