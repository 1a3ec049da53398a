"""Calibrate OLSS schedules for a Stable Diffusion pipeline, end to end.

1. Run the teacher (default DPM-Solver++(3M), T=250, down to t = 0; :mod:`schedules.teachers`)
   through the real pipeline with a :class:`~schedules.trajectory.TrajectoryRecorder` as
   ``pipe.scheduler``, at every guidance scale of the grid: the calibration prompts are shared
   out over the grid (round-robin), the held-out prompts run at every scale.
   The pipeline may be SD 1.x / 2.x (``StableDiffusionPipeline``, the network predicting
   ``epsilon`` or ``v``) or SDXL (``StableDiffusionXLPipeline``: two encoders, pooled embeddings
   and micro-conditioning, :class:`AddedConditioning`). OLSS needs no change for ``v``: every
   teacher step is linear in the sample and the network output, whatever it predicts, so the
   recorded outputs span the same subspace argument (arXiv:2305.14677, Sec. 3); the schedule
   records the teacher's ``prediction_type`` and serves only models with that one.
2. Fit every (step count, guidance scale) on one path per step count with
   :func:`schedules.olss_search.search_guidance_grid`, using the pipeline's own UNet and
   classifier-free guidance as ``model_fn`` (:class:`GuidedModel`), within a budget of model
   evaluations.
3. Validate each schedule on the held-out prompts against the teacher and against
   DPM-Solver++(2M) and UniPC at the same step count (:mod:`schedules.heldout`).

Every model evaluation (one guided output for one example) is counted: the teacher runs, the
search and the held-out runs; each schedule's ``fit_report.cost`` has the totals.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from diffusers import SchedulerMixin
from tqdm.auto import tqdm

from schedules.closed_loop import EvaluationBudget, FitGroup
from schedules.guidance_fit import with_guidance_intervals
from schedules.heldout import heldout_report
from schedules.olss_search import search, search_guidance_grid
from schedules.registry import model_key
from schedules.schedule_file import FitCost, Method, Schedule
from schedules.teachers import DEFAULT_TEACHER, Teacher, parse_teacher
from schedules.trajectory import Trajectories, TrajectoryRecorder

DEFAULT_STEPS = (4, 5, 6, 8)
DEFAULT_GUIDANCE_GRID = (1.0, 2.0, 4.0, 7.5, 15.0)
"""Guidance scales a calibration fits by default; any scale in between is served by blending
neighbours (:mod:`schedules.guidance_blend`)."""
DEFAULT_NUM_VALIDATION = 4
"""Held-out prompts, each run at every guidance scale of the grid (for the held-out reports)."""
DEFAULT_MAX_EVALUATIONS = 12_000
"""Model evaluations for the path searches and refinements of all step counts together."""
DEFAULT_BATCH_SIZE = 24
"""Examples per UNet call at 512x512 (twice the rows under classifier-free guidance). An eager
UNet call costs its host time whatever its size until the device takes longer: on an H200, SD 1.5
at 512x512 spent 52.7 ms of host time per call (profiled) against about 3.3 ms of device time per
row, and a teacher step of 8 rows took as long as one of 16 (docs/BENCHMARKS.md, "GPU
calibration cost"). 24 puts each guidance scale's teacher examples of the default calibration
(16 fitted and 4 held out) and its search examples in one call per step. Larger images get fewer
(:func:`default_batch_size`)."""
DEFAULT_BATCH_PIXELS = 512 * 512
"""The image size :data:`DEFAULT_BATCH_SIZE` is for."""
DEFAULT_SEARCH_EXAMPLES = 24
"""Calibration examples per guidance scale the path search runs on (the chosen path is then
fitted on all of them)."""


def default_batch_size(height: int, width: int) -> int:
    """Examples per UNet call at ``height`` x ``width``: :data:`DEFAULT_BATCH_SIZE` at 512x512,
    scaled by the inverse of the pixel count, since activation memory grows with it (SDXL at
    1024x1024 gets 6, SD 2.x at 768x768 gets 10; at least 1)."""
    return max(1, DEFAULT_BATCH_SIZE * DEFAULT_BATCH_PIXELS // (height * width))


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


@dataclass(frozen=True)
class AddedConditioning:
    """SDXL's ``added_cond_kwargs`` per example (Podell et al., 2023, Sec. 2.2).

    Args:
        text_embeds: ``(N, projection)`` pooled embeddings of the prompts.
        negative_text_embeds: the same of the negative prompts (``None`` without guidance).
        time_ids: ``(N, 6)``: original size, crop top-left, target size of each example.
    """

    text_embeds: torch.Tensor
    negative_text_embeds: torch.Tensor | None
    time_ids: torch.Tensor

    def select(self, index: torch.Tensor) -> AddedConditioning:
        negative = self.negative_text_embeds
        return AddedConditioning(
            self.text_embeds[index],
            None if negative is None else negative[index],
            self.time_ids[index],
        )

    def unet_kwargs(self, start: int, stop: int, guided: bool) -> dict[str, torch.Tensor]:
        """``added_cond_kwargs`` of examples ``start:stop``, doubled as ``[negative, positive]``
        when ``guided``."""
        embeds, time_ids = self.text_embeds[start:stop], self.time_ids[start:stop]
        if guided and self.negative_text_embeds is not None:
            embeds = torch.cat([self.negative_text_embeds[start:stop], embeds])
            time_ids = torch.cat([time_ids, time_ids])
        return {"text_embeds": embeds, "time_ids": time_ids}

    @staticmethod
    def cat(parts: Sequence[AddedConditioning]) -> AddedConditioning:
        negatives = [p.negative_text_embeds for p in parts]
        return AddedConditioning(
            torch.cat([p.text_embeds for p in parts]),
            None if any(n is None for n in negatives) else torch.cat(negatives),  # type: ignore[arg-type]
            torch.cat([p.time_ids for p in parts]),
        )


class GuidedModel:
    """``model_fn(sample, timestep)``: exactly the guided output the pipeline computes.

    For the examples' stored prompt embeddings (in recorded order), it runs the UNet on
    ``cat([x, x])`` with ``cat([uncond, cond])`` embeddings and returns
    ``out_u + g (out_c - out_u)`` (``out_c`` alone without ``uncond``), in chunks of
    ``batch_size`` examples, as float32 on CPU. It counts its evaluations (examples run) and
    gives the model of a subset of its examples (:meth:`select`). ``added`` is SDXL's added
    conditioning (``None`` for SD 1.x / 2.x); the output is whatever the network predicts.
    """

    def __init__(
        self,
        pipe: Any,
        cond: torch.Tensor,
        uncond: torch.Tensor | None,
        guidance_scale: float,
        batch_size: int,
        added: AddedConditioning | None = None,
    ) -> None:
        self.pipe = pipe
        self.cond = cond
        self.uncond = uncond
        self.guidance_scale = guidance_scale
        self.batch_size = batch_size
        self.added = added
        self.evaluations = 0

    def select(self, index: torch.Tensor) -> GuidedModel:
        """The model of examples ``index`` (a fresh evaluation count)."""
        index = index.to(self.cond.device)
        uncond = None if self.uncond is None else self.uncond[index]
        added = None if self.added is None else self.added.select(index)
        return GuidedModel(
            self.pipe, self.cond[index], uncond, self.guidance_scale, self.batch_size, added
        )

    @torch.no_grad()
    def __call__(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        unet = self.pipe.unet
        outputs = []
        for start in range(0, sample.shape[0], self.batch_size):
            stop = start + self.batch_size
            x = sample[start:stop].to(unet.device, unet.dtype)
            cond = self.cond[start:stop]
            guided = self.uncond is not None
            added = None if self.added is None else self.added.unet_kwargs(start, stop, guided)
            if self.uncond is None:
                eps = unet(
                    x, timestep, encoder_hidden_states=cond, added_cond_kwargs=added,
                    return_dict=False,
                )[0]
            else:
                uncond = self.uncond[start:stop]
                both = unet(
                    torch.cat([x, x]),
                    timestep,
                    encoder_hidden_states=torch.cat([uncond, cond]),
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]
                eps_uncond, eps_cond = both.chunk(2)
                eps = eps_uncond + self.guidance_scale * (eps_cond - eps_uncond)
            outputs.append(eps.to("cpu", torch.float32))
        self.evaluations += sample.shape[0]
        return torch.cat(outputs)


def record_teacher(
    pipe: Any,
    prompts: Sequence[str],
    teacher: Teacher,
    guidance_scale: float,
    seeds: int | Sequence[int],
    height: int,
    width: int,
    negative_prompt: str = "",
    batch_size: int | None = None,
    progress: bool = True,
    description: str = "teacher",
) -> tuple[Trajectories, GuidedModel]:
    """Run the teacher through ``pipe`` for every prompt; return trajectories and ``model_fn``.

    Example n starts from ``randn(seeds[n])`` (a CPU generator; an int ``seeds`` means
    ``seeds + n``), so its noise does not depend on the batching; ``batch_size`` examples go
    into each UNet call (default :func:`default_batch_size` of the image size). Each example's
    condition is its prompt. The pipeline's scheduler is restored afterwards. An SDXL pipeline (its
    ``encode_prompt`` gives pooled embeddings too) is conditioned as the worker serves it: an
    empty negative prompt is what the pipeline makes of none (zeros with
    ``force_zeros_for_empty_prompt``), the micro-conditioning is
    ``(height, width, 0, 0, height, width)``.
    """
    if isinstance(seeds, int):
        seeds = range(seeds, seeds + len(prompts))
    if len(seeds) != len(prompts):
        raise ValueError(f"need one seed per prompt ({len(prompts)}), got {len(seeds)}")
    batch_size = batch_size or default_batch_size(height, width)
    recorder = TrajectoryRecorder(teacher.scheduler)
    original = pipe.scheduler
    device = pipe._execution_device
    cfg = guidance_scale > 1.0
    scale = pipe.vae_scale_factor
    latent_shape = (pipe.unet.config.in_channels, height // scale, width // scale)
    conds, unconds, addeds = [], [], []
    pipe.scheduler = recorder
    try:
        batches = range(0, len(prompts), batch_size)
        for start in tqdm(batches, desc=description, disable=not progress):
            batch = list(prompts[start : start + batch_size])
            cond, uncond, added = _encode_prompts(
                pipe, batch, device, cfg, negative_prompt, height, width
            )
            pooled: dict[str, Any] = {}
            if added is not None:
                pooled = {
                    "pooled_prompt_embeds": added.text_embeds,
                    "negative_pooled_prompt_embeds": added.negative_text_embeds,
                }
                addeds.append(added)
            noise = torch.stack(
                [
                    torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed))
                    for seed in seeds[start : start + len(batch)]
                ]
            )
            pipe(
                prompt_embeds=cond,
                negative_prompt_embeds=uncond if cfg else None,
                guidance_scale=guidance_scale,
                height=height,
                width=width,
                latents=noise.to(device, cond.dtype),
                output_type="latent",
                **pooled,
                **teacher.run_kwargs(),
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
        AddedConditioning.cat(addeds) if addeds else None,
    )
    traj = recorder.trajectories().with_metadata(
        conditions=tuple(prompts), guidance_scale=float(guidance_scale)
    )
    return traj, model_fn


def _encode_prompts(
    pipe: Any,
    prompts: list[str],
    device: torch.device,
    cfg: bool,
    negative_prompt: str,
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor | None, AddedConditioning | None]:
    """Prompt (and negative) embeddings of ``prompts``, and SDXL's added conditioning."""
    sdxl = hasattr(pipe, "text_encoder_2")
    negatives = [negative_prompt] * len(prompts) if negative_prompt or not sdxl else None
    with torch.no_grad():
        encoded = pipe.encode_prompt(
            prompts, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=negatives,
        )
    if not sdxl:
        cond, uncond = encoded
        return cond, uncond, None
    cond, uncond, pooled, negative_pooled = encoded
    time_ids = torch.tensor([(height, width, 0, 0, height, width)], dtype=cond.dtype)
    added = AddedConditioning(
        pooled, negative_pooled if cfg else None,
        time_ids.to(device).repeat(len(prompts), 1),
    )
    return cond, uncond, added


@dataclass(frozen=True)
class CalibrationConfig:
    """What :func:`calibrate` fits, and how.

    Args:
        num_steps: one or more schedule lengths k.
        teacher: ``"name:T"`` (see :mod:`schedules.teachers`) or a diffusers scheduler instance.
        guidance_scale: one classifier-free guidance scale or a grid of them
            (:data:`DEFAULT_GUIDANCE_GRID`); a grid shares one path per step count and its
            calibration prompts round-robin, so it costs about what one scale does.
        seed: example n starts from ``randn(seed + n)``; held-out examples continue the count.
        num_validation: held-out prompts, run at every guidance scale (0 skips validation).
        height, width: image size in pixels (default: the UNet's native size).
        negative_prompt: the unconditional prompt.
        batch_size: examples per pipeline / UNet call (default: :func:`default_batch_size` of
            the image size).
        method: a :class:`~schedules.schedule_file.Method` or its value (default closed-loop).
        teacher_steps: T when ``teacher`` is a scheduler instance.
        max_evaluations: model evaluations the closed-loop path searches and refinements of all
            step counts may spend together (``None``: no limit); the teacher and held-out runs
            come on top.
        search_examples: calibration examples per guidance scale the path search runs on.
        validation_fraction: share of each guidance scale's calibration examples held out of the
            fit to check each schedule (and to keep the error from rising with the step count).
    """

    num_steps: int | Sequence[int] = DEFAULT_STEPS
    teacher: str | SchedulerMixin = DEFAULT_TEACHER
    guidance_scale: float | Sequence[float] = DEFAULT_GUIDANCE_GRID
    seed: int = 0
    num_validation: int = DEFAULT_NUM_VALIDATION
    height: int | None = None
    width: int | None = None
    negative_prompt: str = ""
    batch_size: int | None = None
    method: Method | str = Method.CLOSED_LOOP
    teacher_steps: int | None = None
    max_evaluations: int | None = DEFAULT_MAX_EVALUATIONS
    search_examples: int | None = DEFAULT_SEARCH_EXAMPLES
    validation_fraction: float = 0.25

    @property
    def step_counts(self) -> list[int]:
        """``num_steps`` as a list."""
        return [self.num_steps] if isinstance(self.num_steps, int) else list(self.num_steps)

    @property
    def guidance_scales(self) -> list[float]:
        """``guidance_scale`` as a sorted list of distinct scales."""
        scales = (
            [self.guidance_scale]
            if isinstance(self.guidance_scale, (int, float))
            else self.guidance_scale
        )
        return sorted({float(g) for g in scales})


@dataclass
class _Counter:
    """Model evaluations of a calibration run, by part."""

    teacher: int = 0
    search: int = 0
    heldout: int = 0

    @property
    def total(self) -> int:
        return self.teacher + self.search + self.heldout


def calibrate(
    pipe: Any,
    prompts: Sequence[str] | None = None,
    config: CalibrationConfig = CalibrationConfig(),
    *,
    model_id: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> list[Schedule]:
    """Fit OLSS schedules for ``pipe`` at each step count and guidance scale of ``config``.

    Args:
        pipe: a diffusers ``StableDiffusionPipeline`` (any device and dtype).
        prompts: calibration prompts (default :func:`default_prompts`); the last
            ``config.num_validation`` are held out for validation, the rest are fitted, shared
            out over the guidance scales.
        config: step counts, teacher, guidance grid, seed, budget and the other settings.
        model_id: registry key source (default ``pipe.name_or_path``), see
            :func:`schedules.registry.model_key`.
        progress: show tqdm progress bars.
        log: receives one line per closed-loop candidate (e.g. ``print``) and the cost.

    Returns the schedules by step count, then guidance scale. Each ``fit_report.cost`` has its
    own search cost and the whole run's evaluations and seconds (teacher, search, held-out).
    """
    started = time.perf_counter()
    prompts = list(prompts) if prompts is not None else default_prompts()
    steps = config.step_counts
    scales = config.guidance_scales
    if not steps:
        raise ValueError("num_steps must name at least one step count")
    if not scales:
        raise ValueError("guidance_scale must name at least one guidance scale")
    num_validation = config.num_validation
    if not 0 <= num_validation < len(prompts):
        raise ValueError(
            f"num_validation={num_validation} must leave calibration prompts out of {len(prompts)}"
        )
    fit_prompts = prompts[: len(prompts) - num_validation]
    heldout_prompts = prompts[len(prompts) - num_validation :]
    if len(fit_prompts) < len(scales):
        raise ValueError(
            f"{len(fit_prompts)} calibration prompts cannot cover {len(scales)} guidance scales; "
            "pass more prompts or fewer scales"
        )
    native = pipe.unet.config.sample_size * pipe.vae_scale_factor
    height, width = config.height or native, config.width or native
    teacher = parse_teacher(config.teacher, dict(pipe.scheduler.config), config.teacher_steps)
    pipe.set_progress_bar_config(disable=True)
    key = model_key(model_id or getattr(pipe, "name_or_path", None) or "unknown")
    common = dict(
        teacher=teacher,
        height=height,
        width=width,
        negative_prompt=config.negative_prompt,
        batch_size=config.batch_size,
        progress=progress,
    )
    count = _Counter()
    groups, heldouts = [], []
    heldout_seeds = [config.seed + len(scales) * len(fit_prompts) + n
                     for n in range(len(heldout_prompts))]
    for g, scale in enumerate(scales):
        mine = [fit_prompts[n] for n in range(g, len(fit_prompts), len(scales))]
        # The held-out prompts ride in the same teacher run (fewer, fuller UNet calls); their
        # noises are the same at every scale.
        seeds = [config.seed + g * len(fit_prompts) + n for n in range(len(mine))]
        traj, model_fn = record_teacher(
            pipe,
            mine + heldout_prompts,
            guidance_scale=scale,
            seeds=seeds + heldout_seeds,
            description=f"teacher cfg{scale:g}",
            **common,
        )
        count.teacher += traj.num_examples * teacher.num_steps
        fit = torch.arange(len(mine))
        groups.append(FitGroup(_keyed(traj.select(fit), key, height, width), model_fn.select(fit)))
        if heldout_prompts:
            held = torch.arange(len(mine), traj.num_examples)
            heldouts.append((traj.select(held), model_fn.select(held)))
    schedules = _fit(groups, steps, config, log, progress)
    count.search = sum(
        s.fit_report.cost.evaluations
        for s in schedules[:: len(groups)]
        if s.fit_report.cost is not None
    )
    validated = []
    for i, schedule in enumerate(schedules):
        if heldouts:
            held, held_fn = heldouts[i % len(groups)]
            before = held_fn.evaluations
            schedule = schedule.with_heldout(heldout_report(schedule, held, held_fn))
            count.heldout += held_fn.evaluations - before
        validated.append(schedule)
    seconds = time.perf_counter() - started
    if log is not None:
        log(
            f"calibration: {count.total} model evaluations (teacher {count.teacher}, search "
            f"{count.search}, held-out {count.heldout}) in {seconds:.0f} s"
        )
    return [_with_totals(s, count.total, seconds) for s in validated]


def _keyed(traj: Trajectories, key: str, height: int, width: int) -> Trajectories:
    return traj.with_metadata(model_id=key, resolution=(height, width))


def _fit(
    groups: list[FitGroup],
    steps: list[int],
    config: CalibrationConfig,
    log: Callable[[str], None] | None,
    progress: bool,
) -> list[Schedule]:
    """Schedules by step count, then group: one closed-loop search over the grid, or each
    (k, scale) on its own for the teacher-forced methods."""
    if Method(config.method) is Method.CLOSED_LOOP:
        grid = search_guidance_grid(
            groups,
            steps,
            budget=EvaluationBudget(max_evaluations=config.max_evaluations),
            search_examples=config.search_examples,
            validation_fraction=config.validation_fraction,
            progress=log,
        )
        return with_guidance_intervals(grid, groups)
    return [
        search(group.traj, k, method=config.method)
        for k in tqdm(steps, desc="fit", disable=not progress)
        for group in groups
    ]


def _with_totals(schedule: Schedule, evaluations: int, seconds: float) -> Schedule:
    """``schedule`` whose cost also states the whole calibration run's."""
    cost = schedule.fit_report.cost or FitCost(evaluations=0, seconds=0.0)
    total = replace(cost, calibration_evaluations=evaluations, calibration_seconds=seconds)
    return schedule.with_report(cost=total)
