"""TrajectoryRecorder: what it records, how runs accumulate, and that it is a drop-in scheduler."""

from __future__ import annotations

import inspect

import pytest
import torch
from diffusers import DDIMScheduler

from schedules.sampling import run_sampler
from schedules.trajectory import TrajectoryRecorder


def test_records_inputs_outputs_timesteps_and_final_sample(ddim, mixture) -> None:
    teacher = DDIMScheduler.from_config(ddim.config)
    recorder = TrajectoryRecorder(teacher, dtype=torch.float64)
    noise = torch.randn(3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    final = run_sampler(recorder, mixture, noise, 6)
    traj = recorder.trajectories()
    assert traj.samples.shape == (7, 3, 1, 4, 4) and traj.outputs.shape == (6, 3, 1, 4, 4)
    assert traj.timesteps.tolist() == teacher.timesteps.tolist()
    torch.testing.assert_close(traj.samples[0], noise)
    torch.testing.assert_close(traj.samples[-1], final)
    torch.testing.assert_close(traj.outputs[2], mixture(traj.samples[2], teacher.timesteps[2]))
    assert traj.teacher_class == "DDIMScheduler" and traj.init_noise_sigma == 1.0
    assert traj.teacher_config["num_train_timesteps"] == 1000


def test_runs_accumulate_along_examples_in_order(ddim, mixture) -> None:
    recorder = TrajectoryRecorder(DDIMScheduler.from_config(ddim.config))
    first = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    second = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    run_sampler(recorder, mixture, first, 5)
    run_sampler(recorder, mixture, second, 5)
    traj = recorder.trajectories()
    assert traj.num_examples == 5
    torch.testing.assert_close(traj.samples[0], torch.cat([first, second]))


def test_delegates_like_the_teacher(ddim) -> None:
    teacher = DDIMScheduler.from_config(ddim.config)
    recorder = TrajectoryRecorder(teacher)
    recorder.set_timesteps(4)
    assert recorder.config is teacher.config and recorder.order == teacher.order
    assert recorder.timesteps is teacher.timesteps
    assert {"eta", "generator"} <= set(inspect.signature(recorder.step).parameters)


def test_no_complete_run_is_an_error(ddim) -> None:
    with pytest.raises(ValueError, match="no complete sampling run"):
        TrajectoryRecorder(DDIMScheduler.from_config(ddim.config)).trajectories()
