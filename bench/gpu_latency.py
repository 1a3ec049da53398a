"""GPU latency of one Stable Diffusion 1.5-sized generation: per stage, per sampler, per batch.

Target (the issue "GPU fast path and latency benchmark"): at most 0.25 s per 512x512 image at
batch 1 on one H100, pipeline call to decoded image, with a 5-step OLSS schedule and
classifier-free guidance; at least 12 images/s at batch 8.

What runs (full mode, about 5-7 minutes on an H100 by estimate; not measured yet)::

    python -m bench.gpu_latency --out bench/results/gpu_latency.json

* The model has Stable Diffusion 1.5's architecture, built from :mod:`devtools.sd_configs` (UNet
  859.5M parameters, VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M) with random weights, so
  nothing is downloaded. The compute cost equals the real model's; the images are noise.
* Samplers, each with classifier-free guidance (the UNet runs on a doubled batch): OLSS at 5 and
  8 steps, DPM-Solver++(2M) at 20 and 25, DDIM at 50. The OLSS schedules are fitted on the
  analytic Gaussian-mixture testbed (:mod:`devtools.analytic`): a schedule calibrated on
  random weights would be meaningless, and cost depends only on the step count and the shapes.
* Stages are timed with CUDA events (:class:`workers.stage_timer.StageTimer`) and the whole
  call also with a synchronised wall clock: median and p90 over ``--repeats`` runs after
  warm-up, images/s and peak GPU memory (``torch.cuda.max_memory_allocated``, weights included).
* The full sampler grid (batch 1, 4, 8) runs with the worker's default configuration on the
  device (``FastPathOptions.for_device``). Each optimisation (fp16, SDPA, channels-last,
  torch.compile) is then switched against that default at batch 1 with OLSS-5, plus an all-off
  row, so each one's effect is measured in the same run. Compile also runs at batch 8.
* A host-device synchronisation check runs one generation per sampler with
  :func:`devtools.host_sync.detect_host_syncs` around every denoising step (the CUDA runtime's
  sync debug mode on a GPU; the meta device stands in on a CPU).

``--tiny`` runs the same code on a CPU with a tiny configuration (64x64 images, fp32, no
compile, few repeats) so the script is tested; its numbers are not latency claims. ``--quick``
is a shorter GPU run. The last thing printed is a compact table; ``--out`` gets a JSON of every
number.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from devtools.host_sync import HostSync, detect_host_syncs
from devtools.sd_configs import SD15, SD_DDIM_CONFIG, SD_TOKENIZER_MAX_LENGTH, TINY, ArchSpec
from schedules.samplers import build_sampler
from workers.fast_path import FastPathOptions, apply_fast_path, compile_models, pick_device
from workers.stage_timer import StageTimer

PROMPT = "a photograph of an astronaut riding a horse on the moon"
GUIDANCE_SCALE = 7.5
OPTIMISATIONS = ("fp16", "sdpa", "channels_last", "compile")
ALL_OFF = FastPathOptions(fp16=False, sdpa=False, channels_last=False, compile=False)

# --------------------------------------------------------------------------- model


def build_pipeline(
    spec: ArchSpec, device: torch.device, work_dir: Path, seed: int = 0
) -> StableDiffusionPipeline:
    """Random-weights fp32 pipeline of ``spec``'s architecture, created directly on ``device``.

    Parameters are allocated and initialised on the device (no host copy, a few seconds for
    SD 1.5 on a GPU); :func:`workers.fast_path.apply_fast_path` then casts them. The tokenizer
    is the local byte-level CLIP tokenizer padded to 77 tokens.
    """
    from devtools.tiny_pipeline import write_byte_level_tokenizer

    tokenizer = write_byte_level_tokenizer(work_dir / "tokenizer", SD_TOKENIZER_MAX_LENGTH)
    vocab = len(tokenizer.get_vocab())
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **{**spec.text, "vocab_size": max(spec.text["vocab_size"], vocab)},
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**SD_DDIM_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def parameter_counts(pipe: StableDiffusionPipeline) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder")
    }


# --------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class Sampler:
    """A sampler at a step count: ``kind`` is ``olss``, ``dpmsolver++`` or ``ddim``."""

    kind: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.steps}"


ALL_SAMPLERS = (
    Sampler("olss", 5),
    Sampler("olss", 8),
    Sampler("dpmsolver++", 20),
    Sampler("dpmsolver++", 25),
    Sampler("ddim", 50),
)


def parse_sampler(text: str) -> Sampler:
    kind, _, steps = text.rpartition("-")
    if kind not in ("olss", "dpmsolver++", "ddim") or not steps.isdigit():
        raise argparse.ArgumentTypeError(
            f"sampler {text!r} must be KIND-STEPS with KIND olss, dpmsolver++ or ddim"
        )
    return Sampler(kind, int(steps))


def fit_bench_schedules(steps: Sequence[int], spec: ArchSpec) -> dict[int, Any]:
    """OLSS schedules with a valid fitted structure, one per step count.

    Fitted (``method="uniform"``) on 64 DDIM-50 trajectories of the analytic Gaussian-mixture
    testbed at guidance 7.5, with SD's noise schedule. The weights here are random, so the
    coefficients' quality is irrelevant; a step costs one UNet call whatever they are.
    """
    from devtools.analytic import GaussianMixtureDiffusion, record_trajectories
    from schedules import search

    testbed = GaussianMixtureDiffusion()
    labels = torch.arange(64) % testbed.config.num_classes
    noise = torch.randn(64, testbed.dim, generator=torch.Generator().manual_seed(0))
    teacher = DDIMScheduler(**SD_DDIM_CONFIG)
    traj = record_trajectories(
        teacher, testbed.model_fn(labels, GUIDANCE_SCALE), noise.double(), num_inference_steps=50
    ).with_metadata(
        model_id=spec.name,
        guidance_scale=GUIDANCE_SCALE,
        resolution=(spec.resolution, spec.resolution),
    )
    return {k: search(traj, num_steps=k, method="uniform") for k in sorted(set(steps))}


def make_scheduler(sampler: Sampler, schedules: dict[int, Any]) -> Any:
    if sampler.kind == "olss":
        from schedules import OLSSScheduler

        return OLSSScheduler.from_schedule(schedules[sampler.steps])
    return build_sampler(sampler.kind, SD_DDIM_CONFIG)


# --------------------------------------------------------------------------- one generation

StepContext = Callable[[int], AbstractContextManager[Any]]


@torch.no_grad()
def generate(
    pipe: StableDiffusionPipeline,
    prompts: list[str],
    num_steps: int,
    guidance_scale: float,
    generator: torch.Generator,
    timer: StageTimer,
    step_context: StepContext | None = None,
) -> torch.Tensor:
    """One ``pipe(prompts, ...)`` generation, with its three stages timed by ``timer``.

    The same calls, in the same order, as ``StableDiffusionPipeline.__call__`` with
    ``output_type="pt"`` (a test checks the images match), written out so the stage boundaries
    are exact. Like the pipeline call it runs without autograd: with it, every step's activations
    stay alive (batch 8 ran out of an H200's 139 GiB). ``step_context(i)`` wraps denoising step
    ``i`` (used by the sync check).
    """
    device = pipe.device
    cfg = guidance_scale > 1.0
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    scheduler = pipe.scheduler
    with timer.stage("encode"):
        cond, uncond = pipe.encode_prompt(prompts, device, 1, cfg, None)
        embeds = torch.cat([uncond, cond]) if cfg else cond
    with timer.stage("denoise"):
        scheduler.set_timesteps(num_steps, device=device)
        latents = pipe.prepare_latents(
            len(prompts), pipe.unet.config.in_channels, size, size, embeds.dtype, device, generator
        )
        extra = pipe.prepare_extra_step_kwargs(generator, 0.0)
        for i, t in enumerate(scheduler.timesteps):
            with step_context(i) if step_context else contextlib.nullcontext():
                model_input = torch.cat([latents] * 2) if cfg else latents
                model_input = scheduler.scale_model_input(model_input, t)
                out = pipe.unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
                if cfg:
                    out_uncond, out_text = out.chunk(2)
                    out = out_uncond + guidance_scale * (out_text - out_uncond)
                latents = scheduler.step(out, t, latents, **extra, return_dict=False)[0]
    with timer.stage("decode"):
        scaled = latents / pipe.vae.config.scaling_factor
        image = pipe.vae.decode(scaled, return_dict=False, generator=generator)[0]
        image = pipe.image_processor.postprocess(
            image, output_type="pt", do_denormalize=[True] * image.shape[0]
        )
    return image


# --------------------------------------------------------------------------- timing


@dataclass
class Stat:
    median_ms: float
    p90_ms: float


@dataclass
class Cell:
    """Timings of one (configuration, sampler, batch) combination."""

    config: str
    options: dict[str, Any]
    sampler: str
    steps: int
    batch: int
    guidance_scale: float
    warmup_runs: int
    first_run_s: float
    repeats: int
    stages: dict[str, Stat]
    per_step_ms: float
    images_per_s: float
    peak_memory_mib: float | None
    finite_output: bool


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _stat(values: list[float]) -> Stat:
    ms = [v * 1000.0 for v in values]
    return Stat(
        median_ms=round(statistics.median(ms), 3), p90_ms=round(float(np.percentile(ms, 90)), 3)
    )


@dataclass(frozen=True)
class Budget:
    """How long one cell may run: at least ``min_repeats``, at most ``repeats`` timed runs,
    stopping once ``seconds`` are spent; warm-ups likewise (at least one)."""

    warmup: int
    repeats: int
    min_repeats: int
    seconds: float


def time_cell(
    pipe: StableDiffusionPipeline,
    config: str,
    options: FastPathOptions,
    sampler: Sampler,
    schedules: dict[int, Any],
    batch: int,
    budget: Budget,
    seed: int,
) -> Cell:
    device = pipe.device
    pipe.scheduler = make_scheduler(sampler, schedules)
    prompts = [PROMPT] * batch

    def run(timer: StageTimer) -> torch.Tensor:
        generator = torch.Generator(device).manual_seed(seed)
        return generate(pipe, prompts, sampler.steps, GUIDANCE_SCALE, generator, timer)

    started = time.perf_counter()
    run(StageTimer(device))
    _sync(device)
    first_run_s = time.perf_counter() - started  # includes compilation when compiled
    warmups, started = 1, time.perf_counter()
    while warmups < budget.warmup and time.perf_counter() - started < budget.seconds / 2:
        run(StageTimer(device))
        warmups += 1
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples: list[dict[str, float]] = []
    started = time.perf_counter()
    image = torch.empty(0)
    while len(samples) < budget.repeats:
        timer = StageTimer(device)
        wall_start = time.perf_counter()
        image = run(timer)
        _sync(device)
        wall = time.perf_counter() - wall_start
        samples.append({**timer.durations(), "wall": wall})
        if len(samples) >= budget.min_repeats and time.perf_counter() - started > budget.seconds:
            break
    stages = {
        name: _stat([s[name] for s in samples])
        for name in ("encode", "denoise", "decode", "total", "wall")
    }
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return Cell(
        config=config,
        options=asdict(options),
        sampler=sampler.name,
        steps=sampler.steps,
        batch=batch,
        guidance_scale=GUIDANCE_SCALE,
        warmup_runs=warmups,
        first_run_s=round(first_run_s, 3),
        repeats=len(samples),
        stages=stages,
        per_step_ms=round(stages["denoise"].median_ms / sampler.steps, 3),
        images_per_s=round(batch / (stages["wall"].median_ms / 1000.0), 3),
        peak_memory_mib=round(peak, 1) if peak is not None else None,
        finite_output=bool(torch.isfinite(image).all()),
    )


# --------------------------------------------------------------------------- sync check


@dataclass
class SyncReport:
    """Host-device synchronisations per denoising step of one generation with ``sampler``.

    ``first_run`` is the first generation with a fresh scheduler (one-time uploads show up
    there); ``steady`` is the next one, what a request on a warm worker sees.
    """

    sampler: str
    method: str
    first_run_per_step: list[int]
    steady_per_step: list[int]
    examples: list[str] = field(default_factory=list)

    @property
    def steady_total(self) -> int:
        return sum(self.steady_per_step)


def sync_check(
    pipe: StableDiffusionPipeline, sampler: Sampler, schedules: dict[int, Any], seed: int
) -> SyncReport:
    """Count host-device syncs per denoising step (see :mod:`devtools.host_sync`).

    On CUDA the pipeline itself runs under the CUDA runtime's sync debug mode. Elsewhere a copy
    of the pipeline on the meta device stands in for the accelerator: the check then sees every
    value read of, and every copy to, "device" memory, as a GPU run would.
    """
    device = pipe.device
    if device.type == "cuda":
        unet, check_device, method = pipe.unet, device, "cuda sync debug mode"
    else:
        unet = copy.deepcopy(pipe.unet).to("meta")
        check_device, method = torch.device("meta"), "meta-device stand-in (op hooks)"
    scheduler = make_scheduler(sampler, schedules)
    hidden = pipe.text_encoder.config.hidden_size
    runs: list[list[list[HostSync]]] = []
    for _ in range(2):
        found: list[list[HostSync]] = []

        @contextmanager
        def per_step(i: int, found: list[list[HostSync]] = found) -> Iterator[None]:
            with detect_host_syncs(check_device) as syncs:
                yield
            found.append(syncs)

        _denoise_only(unet, scheduler, hidden, check_device, sampler.steps, seed, per_step)
        runs.append(found)
    counted = "cuda" if check_device.type == "cuda" else "hooks"
    first, steady = ([sum(1 for s in step if s.source == counted) for step in run] for run in runs)
    examples = sorted({f"{s.op} @ {s.where}" for run in runs for step in run for s in step})
    return SyncReport(sampler.name, method, first, steady, examples[:6])


def sync_check_samplers(samplers: Sequence[Sampler]) -> list[Sampler]:
    """OLSS-5 and every other OLSS step count, and each peer kind once at its fewest steps
    (a peer's syncs repeat per step, so more steps only cost time)."""
    chosen: dict[str, Sampler] = {}
    for sampler in sorted({*samplers, Sampler("olss", 5)}, key=lambda s: (s.kind, s.steps)):
        key = sampler.name if sampler.kind == "olss" else sampler.kind
        chosen.setdefault(key, sampler)
    return sorted(chosen.values(), key=lambda s: (s.kind != "olss", s.kind, s.steps))


@torch.no_grad()
def _denoise_only(
    unet: UNet2DConditionModel,
    scheduler: Any,
    hidden_size: int,
    device: torch.device,
    num_steps: int,
    seed: int,
    step_context: StepContext,
) -> None:
    """The denoising loop of :func:`generate` (CFG, batch 1) with stand-in text embeddings."""
    dtype = unet.dtype
    embeds = torch.zeros(2, SD_TOKENIZER_MAX_LENGTH, hidden_size, device=device, dtype=dtype)
    size = unet.config.sample_size
    scheduler.set_timesteps(num_steps, device=device)
    generator = torch.Generator("cpu").manual_seed(seed)
    latents = torch.randn(1, 4, size, size, generator=generator, dtype=dtype).to(device)
    latents = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        with step_context(i):
            model_input = scheduler.scale_model_input(torch.cat([latents] * 2), t)
            out = unet(model_input, t, encoder_hidden_states=embeds, return_dict=False)[0]
            out_uncond, out_text = out.chunk(2)
            out = out_uncond + GUIDANCE_SCALE * (out_text - out_uncond)
            latents = scheduler.step(out, t, latents, return_dict=False)[0]


# --------------------------------------------------------------------------- the run


@dataclass(frozen=True)
class Plan:
    """What one invocation measures."""

    spec: ArchSpec
    batches: tuple[int, ...]
    samplers: tuple[Sampler, ...]
    budget: Budget
    ablations: bool
    compile: bool
    compile_mode: str
    compile_batches: tuple[int, ...]


def plan_from_args(args: argparse.Namespace) -> Plan:
    if args.tiny:
        plan = Plan(
            spec=TINY,
            batches=(1, 4, 8),
            samplers=ALL_SAMPLERS,
            budget=Budget(warmup=1, repeats=2, min_repeats=2, seconds=0.5),
            ablations=True,
            compile=False,
            compile_mode=args.compile_mode,
            compile_batches=(),
        )
    elif args.quick:
        plan = Plan(
            spec=SD15,
            batches=(1, 8),
            samplers=(Sampler("olss", 5), Sampler("dpmsolver++", 20)),
            budget=Budget(warmup=2, repeats=5, min_repeats=3, seconds=3.0),
            ablations=True,
            compile=True,
            compile_mode=args.compile_mode,
            compile_batches=(1,),
        )
    else:
        plan = Plan(
            spec=SD15,
            batches=(1, 4, 8),
            samplers=ALL_SAMPLERS,
            budget=Budget(warmup=3, repeats=10, min_repeats=3, seconds=4.0),
            ablations=True,
            compile=True,
            compile_mode=args.compile_mode,
            compile_batches=(1, 8),
        )
    overrides: dict[str, Any] = {}
    if args.batches:
        overrides["batches"] = tuple(args.batches)
    if args.samplers:
        overrides["samplers"] = tuple(args.samplers)
    if args.repeats:
        overrides["budget"] = replace(
            plan.budget,
            repeats=args.repeats,
            min_repeats=min(plan.budget.min_repeats, args.repeats),
        )
    if args.no_compile:
        overrides["compile"] = False
    if args.no_ablations:
        overrides["ablations"] = False
    return replace(plan, **overrides)


def ablation_configs(
    default: FastPathOptions, device: torch.device
) -> list[tuple[str, FastPathOptions]]:
    """The default with each optimisation switched (compile excepted: it reuses the default's
    pipeline), plus all off. fp16 is only switched on CUDA (``--tiny`` is fp32 only)."""
    configs = []
    for name in OPTIMISATIONS:
        if name == "compile" or (name == "fp16" and device.type != "cuda"):
            continue
        flipped = replace(default, **{name: not getattr(default, name)})
        configs.append((f"{name} {'on' if getattr(flipped, name) else 'off'}", flipped))
    if all(options != ALL_OFF for _, options in configs) and default != ALL_OFF:
        configs.append(("all off", ALL_OFF))
    return configs


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_benchmark(plan: Plan, device: torch.device, seed: int, log: Callable[[str], None]) -> dict:
    started = time.perf_counter()
    if device.type == "cpu":
        plan = replace(plan, compile=False)
    default = FastPathOptions.for_device(device, compile=False)
    olss_steps = [s.steps for s in plan.samplers if s.kind == "olss"] + [5]
    schedules = fit_bench_schedules(olss_steps, plan.spec)
    olss5 = Sampler("olss", 5)
    cells: list[Cell] = []
    syncs: list[SyncReport] = []
    compile_first_run_s: dict[str, float] = {}
    errors: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)

        def build(options: FastPathOptions) -> StableDiffusionPipeline:
            pipe = build_pipeline(plan.spec, device, work, seed)
            return apply_fast_path(pipe, device, options)

        log(f"building {plan.spec.name} on {device} with {default.label}")
        pipe = build(default)
        counts = parameter_counts(pipe)
        for sampler in sync_check_samplers(plan.samplers):
            syncs.append(sync_check(pipe, sampler, schedules, seed))
            log(f"sync check {sampler.name}: steady per step {syncs[-1].steady_per_step}")
        for batch in plan.batches:
            for sampler in plan.samplers:
                cells.append(
                    time_cell(
                        pipe, "default", default, sampler, schedules, batch, plan.budget, seed
                    )
                )
                log(_cell_line(cells[-1]))
        if plan.compile:
            compiled = replace(default, compile=True, compile_mode=plan.compile_mode)
            compile_models(pipe, compiled)
            for batch in plan.compile_batches:
                try:
                    cell = time_cell(
                        pipe, "compile on", compiled, olss5, schedules, batch, plan.budget, seed
                    )
                except Exception as error:  # one failed compile must not lose the whole run
                    errors.append(f"compile at batch {batch}: {type(error).__name__}: {error}")
                    log(errors[-1])
                    break
                compile_first_run_s[f"batch {batch}"] = cell.first_run_s
                cells.append(cell)
                log(_cell_line(cell))
        del pipe
        torch._dynamo.reset()
        _free(device)
        if plan.ablations:
            if 1 not in plan.batches or olss5 not in plan.samplers:
                cells.append(
                    time_cell(
                        build(default), "default", default, olss5, schedules, 1, plan.budget, seed
                    )
                )
                _free(device)
            for name, options in ablation_configs(default, device):
                log(f"ablation {name}: {options.label}")
                pipe = build(options)
                cells.append(time_cell(pipe, name, options, olss5, schedules, 1, plan.budget, seed))
                log(_cell_line(cells[-1]))
                del pipe
                _free(device)
    return {
        "meta": _meta(plan, device, default, counts, seed, time.perf_counter() - started),
        "cells": [asdict(c) for c in cells],
        "ablations": _ablations(cells, default),
        "compile_first_run_s": compile_first_run_s,
        "sync_check": [{**asdict(s), "steady_total": s.steady_total} for s in syncs],
        "targets": _targets(cells, plan, device),
        "errors": errors,
    }


def _meta(
    plan: Plan,
    device: torch.device,
    default: FastPathOptions,
    counts: dict[str, int],
    seed: int,
    seconds: float,
) -> dict[str, Any]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    tiny = plan.spec is TINY
    return {
        "model": plan.spec.name,
        "resolution": plan.spec.resolution,
        "parameters": counts,
        "weights_note": (
            "tiny configuration for testing the script; these numbers are not latency claims"
            if tiny
            else "random weights with SD 1.5's architecture: compute cost equals the real model's"
        ),
        "schedule_note": (
            "OLSS schedules fitted on the analytic Gaussian-mixture testbed (uniform path, "
            "DDIM-50 teacher): a step costs one UNet call whatever the coefficients"
        ),
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": __import__("diffusers").__version__,
        "default_options": asdict(default),
        "guidance_scale": GUIDANCE_SCALE,
        "prompt": PROMPT,
        "seed": seed,
        "budget": asdict(plan.budget),
        "tiny": tiny,
        "duration_s": round(seconds, 1),
        "timing": (
            "stages: CUDA events; wall: synchronised perf_counter around the call"
            if device.type == "cuda"
            else "stages and wall: time.perf_counter"
        ),
    }


def _ablations(cells: list[Cell], default: FastPathOptions) -> list[dict[str, Any]]:
    """Each optimisation on vs off at batch 1 with OLSS-5, from cells of this run."""
    at_b1 = {c.config: c for c in cells if c.batch == 1 and c.sampler == "olss-5"}
    base = at_b1.get("default")
    rows = []
    for name in OPTIMISATIONS:
        on_default = bool(getattr(default, name))
        other = at_b1.get(f"{name} {'off' if on_default else 'on'}")
        if base is None or other is None:
            rows.append({"optimisation": name, "measured": False})
            continue
        on, off = (base, other) if on_default else (other, base)
        on_ms, off_ms = on.stages["total"].median_ms, off.stages["total"].median_ms
        rows.append(
            {
                "optimisation": name,
                "measured": True,
                "on_config": on.options,
                "off_config": off.options,
                "on_total_median_ms": on_ms,
                "off_total_median_ms": off_ms,
                "speedup": round(off_ms / on_ms, 3),
            }
        )
    everything_off = asdict(ALL_OFF)
    all_off = next((c for c in at_b1.values() if c.options == everything_off), None)
    if base is not None and all_off is not None:
        rows.append(
            {
                "optimisation": "all (default vs all off)",
                "measured": True,
                "on_total_median_ms": base.stages["total"].median_ms,
                "off_total_median_ms": all_off.stages["total"].median_ms,
                "speedup": round(
                    all_off.stages["total"].median_ms / base.stages["total"].median_ms, 3
                ),
            }
        )
    return rows


def _targets(cells: list[Cell], plan: Plan, device: torch.device) -> dict[str, Any]:
    """The issue's two targets, judged only for SD 1.5 on a GPU."""
    if plan.spec is not SD15 or device.type != "cuda":
        return {"judged": False, "reason": "targets apply to SD 1.5 shapes on a GPU"}

    def best(batch: int) -> Cell | None:
        found = [c for c in cells if c.batch == batch and c.sampler == "olss-5"]
        return min(found, key=lambda c: c.stages["wall"].median_ms) if found else None

    b1, b8 = best(1), best(8)
    return {
        "judged": True,
        "batch1_olss5_s_per_image": b1.stages["wall"].median_ms / 1000 if b1 else None,
        "batch1_config": b1.config if b1 else None,
        "batch1_met": bool(b1 and b1.stages["wall"].median_ms <= 250.0),
        "batch8_olss5_images_per_s": b8.images_per_s if b8 else None,
        "batch8_config": b8.config if b8 else None,
        "batch8_met": bool(b8 and b8.images_per_s >= 12.0),
    }


# --------------------------------------------------------------------------- output


def _cell_line(cell: Cell) -> str:
    s = cell.stages
    return (
        f"{cell.config:<18} {cell.sampler:<15} b{cell.batch:<2} "
        f"enc {s['encode'].median_ms:8.1f}  den {s['denoise'].median_ms:9.1f}  "
        f"dec {s['decode'].median_ms:8.1f}  total {s['total'].median_ms:9.1f} "
        f"(p90 {s['total'].p90_ms:9.1f}) ms  {cell.images_per_s:7.2f} img/s"
    )


def format_table(result: dict[str, Any]) -> str:
    """The compact text table printed last."""
    meta = result["meta"]
    lines = [
        f"# {meta['model']} {meta['resolution']}x{meta['resolution']} on {meta['device_name']}"
        f" (torch {meta['torch']}); {meta['weights_note']}",
        "| config | sampler | batch | encode ms | denoise ms | decode ms | total ms (p90) "
        "| img/s | peak MiB | n |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        s = c["stages"]
        peak = f"{c['peak_memory_mib']:.0f}" if c["peak_memory_mib"] is not None else "-"
        lines.append(
            f"| {c['config']} | {c['sampler']} | {c['batch']} | {s['encode']['median_ms']:.1f} "
            f"| {s['denoise']['median_ms']:.1f} | {s['decode']['median_ms']:.1f} "
            f"| {s['total']['median_ms']:.1f} ({s['total']['p90_ms']:.1f}) "
            f"| {c['images_per_s']:.2f} | {peak} | {c['repeats']} |"
        )
    lines += [
        "",
        "| optimisation (batch 1, olss-5) | on ms | off ms | speed-up |",
        "|---|---|---|---|",
    ]
    for row in result["ablations"]:
        if row["measured"]:
            lines.append(
                f"| {row['optimisation']} | {row['on_total_median_ms']:.1f} "
                f"| {row['off_total_median_ms']:.1f} | {row['speedup']:.2f}x |"
            )
        else:
            lines.append(f"| {row['optimisation']} | - | - | not measured in this run |")
    lines += [
        "",
        "| sampler | host syncs in the denoising loop: first run | warm (steady) | checked by |",
        "|---|---|---|---|",
    ]
    for s in result["sync_check"]:
        lines.append(
            f"| {s['sampler']} | {_per_step(s['first_run_per_step'])} "
            f"| {_per_step(s['steady_per_step'])} | {s['method']} |"
        )
    return "\n".join(lines)


def _per_step(counts: list[int]) -> str:
    """``[2, 0, 0]`` -> ``2 at step 0, none after (3 steps)``; ``[4, 4]`` -> ``4 every step``."""
    n = len(counts)
    if len(set(counts)) == 1:
        return f"{'none' if counts[0] == 0 else f'{counts[0]} every step'} ({n} steps)"
    at = ", ".join(f"{c} at step {i}" for i, c in enumerate(counts) if c)
    return f"{at}, none at the others ({n} steps)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--tiny", action="store_true", help="tiny config on CPU (tests the script)")
    mode.add_argument("--quick", action="store_true", help="shorter GPU run")
    parser.add_argument("--out", type=Path, help="write every number as JSON here")
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1 (default: cuda if present; cpu with --tiny)"
    )
    parser.add_argument("--batches", type=int, nargs="+", help="override the batch sizes")
    parser.add_argument("--samplers", type=parse_sampler, nargs="+", help="e.g. olss-5 ddim-50")
    parser.add_argument("--repeats", type=int, help="timed runs per cell (at most)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-ablations", action="store_true", help="skip the on/off rows")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default 1 with --tiny: on a shared box, spinning threads that "
        "outnumber free cores make a CPU run many times slower)",
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    device = pick_device(args.device or ("cpu" if args.tiny else None))
    if args.tiny and device.type != "cpu":
        raise SystemExit("--tiny runs on the CPU; drop --device or pass --device cpu")
    plan = plan_from_args(args)
    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    result = run_benchmark(plan, device, args.seed, log)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
