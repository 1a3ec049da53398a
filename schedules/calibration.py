"""Calibrate OLSS schedules for a Stable Diffusion pipeline, end to end.

1. Run the teacher (default DDIM, T=100; Duan et al., arXiv:2305.14677, Sec. 4) through the real
   pipeline with a :class:`~schedules.trajectory.TrajectoryRecorder` as ``pipe.scheduler``.
2. Fit each requested step count with :func:`schedules.olss_search.search`, using the pipeline's own
   UNet and classifier-free guidance as ``model_fn``.
3. Validate on held-out prompts against the teacher and against DPM-Solver++(2M) and UniPC at the
   same step count (:mod:`schedules.heldout`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

from schedules.gram import gram_matrix
from schedules.heldout import heldout_report
from schedules.olss_search import search
from schedules.registry import model_key
from schedules.schedule_file import Method, Schedule
from schedules.teachers import DEFAULT_TEACHER, parse_teacher
from schedules.trajectory import Trajectories, TrajectoryRecorder


def default_prompts() -> list[str]:
    """The packaged calibration prompts (``schedules/data/prompts.txt``)."""
    text = resources.files("schedules").joinpath("data/prompts.txt").read_text(encoding="utf-8")
    return _parse_prompts(text)


def load_prompts(path: str | os.PathLike[str] | None = None) -> list[str]:
    """Prompts from a text file (one per line; ``#`` comments and blank lines skipped)."""
    if path is None:
        return default_prompts()
    prompts = _parse_prompts(Path(path).read_text(encoding="utf-8"))
    if not prompts:
        raise ValueError(f"{path}: no prompts found (one prompt per line)")
    return prompts


def _parse_prompts(text: str) -> list[str]:
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class GuidedModel:
    """``model_fn(sample, timestep)``: exactly the guided output the pipeline computes.

    For the examples' stored prompt embeddings (in recorded order), it runs the UNet on
    ``cat([x, x])`` with ``cat([uncond, cond])`` embeddings and returns
    ``eps_u + g (eps_c - eps_u)``, in chunks of ``batch_size`` examples, as float32 on CPU.
    """

    def __init__(
        self,
        pipe: Any,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance_scale: float,
        batch_size: int,
    ) -> None:
        self.pipe = pipe
        self.cond = cond
        self.uncond = uncond
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        unet = self.pipe.unet
        outputs = []
        for start in range(0, sample.shape[0], self.batch_size):
            x = sample[start : start + self.batch_size].to(unet.device, unet.dtype)
            cond = self.cond[start : start + self.batch_size]
            if self.uncond is None:
                eps = unet(x, timestep, encoder_hidden_states=cond, return_dict=False)[0]
            else:
                uncond = self.uncond[start : start + self.batch_size]
                both = unet(
                    torch.cat([x, x]),
                    timestep,
                    encoder_hidden_states=torch.cat([uncond, cond]),
                    return_dict=False,
                )[0]
                eps_uncond, eps_cond = both.chunk(2)
                eps = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
            outputs.append(eps.to("cpu", torch.float32))
        return torch.cat(outputs)


def record_teacher(
    pipe: Any,
    prompts: Sequence[str],
    teacher: Any,
    teacher_steps: int,
    guidance_scale: float,
    seed: int,
    height: int,
    width: int,
    negative_prompt: str = "",
    batch_size: int = 8,
    progress: bool = True,
    description: str = "teacher",
) -> tuple[Trajectories, GuidedModel]:
    """Run the teacher through ``pipe`` for every prompt; return trajectories and ``model_fn``.

    Example n starts from ``randn(seed + n)`` (a CPU generator), so its noise does not depend on
    the batching. The pipeline's scheduler is restored afterwards.
    """
    recorder = TrajectoryRecorder(teacher)
    original = pipe.scheduler
    device = pipe._execution_device
    cfg = guidance_scale > 1.0
    scale = pipe.vae_scale_factor
    latent_shape = (pipe.unet.config.in_channels, height // scale, width // scale)
    conds, unconds = [], []
    pipe.scheduler = recorder
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc=description, disable=not progress):
            batch = list(prompts[start : start + batch_size])
            with torch.no_grad():
                cond, uncond = pipe.encode_prompt(
                    batch, device, 1, cfg, [negative_prompt] * len(batch)
                )
            noise = torch.stack(
                [
                    torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed + n))
                    for n in range(start, start + len(batch))
                ]
            )
            pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond if cfg else None,
                num_inference_steps=teacher_steps,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                latents=noise.to(device, cond.dtype),
                output_type="latent",
            )
            conds.append(cond)
            unconds.append(uncond)
    finally:
        pipe.scheduler = original
    model_fn = GuidedModel(
        pipe,
        torch.cat(conds),
        torch.cat(unconds) if cfg else None,
        guidance_scale,
        batch_size,
    )
    return recorder.trajectories(), model_fn


@dataclass(frozen=True)
class CalibrationConfig:
    """What :func:`calibrate` fits, and how.

    Args:
        num_steps: one or more schedule lengths k.
        teacher: ``"name:T"`` (see :mod:`schedules.teachers`) or a diffusers scheduler instance.
        guidance_scale: classifier-free guidance scale (schedules are fitted per scale).
        seed: example n starts from ``randn(seed + n)``; held-out examples continue the count.
        num_validation: held-out prompts (0 skips validation).
        height, width: image size in pixels (default: the UNet's native size).
        negative_prompt: the unconditional prompt.
        batch_size: examples per pipeline / UNet call.
        method: a :class:`~schedules.schedule_file.Method` or its value (default closed-loop).
        teacher_steps: T when ``teacher`` is a scheduler instance.
        max_paths: closed-loop fits allowed per schedule (see :func:`schedules.olss_search.search`).
    """

    num_steps: int | Sequence[int] = (5, 8)
    teacher: str | SchedulerMixin = DEFAULT_TEACHER
    guidance_scale: float = 7.5
    seed: int = 0
    num_validation: int = 8
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""
    batch_size: int = 8
    method: Method | str = Method.CLOSED_LOOP
    teacher_steps: int | None = None
    max_paths: int = 16

    @property
    def step_counts(self) -> list[int]:
        """``num_steps`` as a list."""
        return [self.num_steps] if isinstance(self.num_steps, int) else list(self.num_steps)


def calibrate(
    pipe: Any,
    prompts: Sequence[str] | None = None,
    config: CalibrationConfig = CalibrationConfig(),
    *,
    model_id: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[Schedule]:
    """Fit OLSS schedules for ``pipe`` at each step count in ``config.num_steps``.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (any device and dtype).
        prompts: calibration prompts (default :func:`default_prompts`); the last
            ``config.num_validation`` are held out for validation, the rest are fitted.
        config: step counts, teacher, guidance, seed and the other settings.
        model_id: registry key source (default ``pipe.name_or_path``), see
            :func:`schedules.registry.model_key`.
        progress: show tqdm progress bars.
        log: receives one line per closed-loop candidate (e.g. ``print``).
    """
    prompts = list(prompts) if prompts is not None else default_prompts()
    steps = config.step_counts
    if not steps:
        raise ValueError("num_steps must name at least one step count")
    num_validation = config.num_validation
    if not 0 <= num_validation < len(prompts):
        raise ValueError(
            f"num_validation={num_validation} must leave calibration prompts out of {len(prompts)}"
        )
    fit_prompts = prompts[: len(prompts) - num_validation]
    heldout_prompts = prompts[len(prompts) - num_validation :]
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = config.height or native, config.width or native
    teacher_scheduler, T = parse_teacher(
        config.teacher, dict(pipe.scheduler.config), config.teacher_steps
    )
    pipe.set_progress_bar_config(disable=True)
    key = model_key(model_id or getattr(pipe, "name_or_path", None) or "unknown")
    common = dict(
        teacher=teacher_scheduler,
        teacher_steps=T,
        guidance_scale=config.guidance_scale,
        height=height,
        width=width,
        negative_prompt=config.negative_prompt,
        batch_size=config.batch_size,
        progress=progress,
    )
    seed = config.seed
    traj, model_fn = record_teacher(pipe, fit_prompts, seed=seed, description="teacher", **common)
    metadata = dict(
        model_id=key, guidance_scale=float(config.guidance_scale), resolution=(height, width)
    )
    traj = traj.with_metadata(**metadata)
    heldout = None
    if heldout_prompts:
        heldout = record_teacher(
            pipe,
            heldout_prompts,
            seed=seed + len(fit_prompts),
            description="held-out teacher",
            **common,
        )
    gram = gram_matrix(traj)
    schedules = []
    for k in tqdm(steps, desc="fit", disable=not progress):
        schedule = search(
            traj,
            k,
            model_fn=model_fn,
            method=config.method,
            gram=gram,
            max_paths=config.max_paths,
            progress=log,
        )
        if heldout is not None:
            schedule = schedule.with_heldout(heldout_report(schedule, *heldout))
        schedules.append(schedule)
    return schedules
