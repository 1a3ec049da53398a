"""Latency of the served path on a GPU: the worker's own engine per stage, sampler and batch,
each optimisation on and off, where a step's time goes, and the service end to end.

Targets (issue 10, OLSS-5 with classifier-free guidance at 512x512): batch 1 request to decoded
image at most 0.10 s in the engine and at most 0.12 s through gateway and worker; batch 8 at
least 25 images/s in the engine and at least 90% of that through the service; a compiled worker
ready within 60 s of its start on a warm compile cache.

What runs is what a worker runs. ``workers.startup.load_model`` loads the benchmark model folder
(:mod:`bench.bench_model`: **SD 1.5's architecture with random weights**, UNet 859.5M parameters,
VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M: the compute of the real model, noise for images)
with the fast path the settings give and the scheduler bank with the model's OLSS schedules; the
worker's warm-up runs (compiling and capturing CUDA graphs for every measured batch size); then
``ServingEngine.generate`` is timed from the call to the decoded PIL images (``wall``: the call's
clock, synchronised by the images' device-to-host copy) and per stage (CUDA events). Every
configuration is a set of ``OLSS_*`` settings, so each optimisation is switched in the same run.

Modes (one at a time; ``--out`` gets a JSON of every number, and ``--gpu-check`` a Markdown
table beside it):

* default: the sampler grid (OLSS-5, OLSS-8, DPM-Solver++(2M)-20/-25, DDIM-50) at batch 1, 4, 8
  with the worker's default for the device, then at batch 1 with OLSS-5 each optimisation
  switched (fp16, SDPA, channels-last, ``torch.compile``, CUDA graphs off/step/loop) and all
  off, compile also at batch 8; a host-sync count per denoising step for each sampler;
* ``--quick``: OLSS-5 and DPM-Solver++-20 at batch 1 and 8;
* ``--profile``: ``torch.profiler`` (CPU and CUDA activity) of the default and of the eager
  (graphs off) configuration at batch 1 (:mod:`bench.step_profile`);
* ``--service``: a real gateway and worker on the device, closed-loop clients at 1, 8 and 32,
  with ``OLSS_OVERLAP_RESULTS`` on and off (:mod:`bench.service_load`), and the worker's cold
  start; ``--cold-start``: a compiled worker started twice on one compile cache (cold, warm);
* ``--gpu-check``: the short acceptance run for issue 10 (``bench/gpu_check.sh``): the targets,
  ``torch.compile`` at batch 1 and 8, every switch on and off, a profile, the service, and cold
  start compiled on a warm cache. On an H200 (2026-12-04, compile at batch 1 only and after the
  service) everything but the cold start took 318 s, compile's warm-up 96 s of it;
* ``--tiny``: the tiny architecture on a CPU (fp32, ``torch.compile`` with the ``eager`` backend,
  CUDA graphs as their CPU fallback) so the script is tested; its numbers are not latency claims.

``--family sdxl`` (issue 15) runs any mode on **SDXL base's architecture with random weights**
(UNet 2567.5M parameters, CLIP ViT-L/14 123.1M and OpenCLIP ViT-bigG/14 with projection 694.7M,
VAE 83.7M decoded in fp32) at 1024x1024, batch 1 and 4; the worker loads it as it loads any SDXL
folder (two text encoders, pooled embeddings and micro-conditioning ``time_ids``). With
``--gpu-check`` it is the short SDXL part of ``bench/gpu_check.sh``: OLSS-5 + CFG at batch 1 and 4
with the worker's default, stage timings and peak memory. ``--tiny --family sdxl`` is its CPU
script check. No targets are judged for SDXL. ``--family sd2`` does the same with SD 2.1
(768-v)'s architecture (UNet 865.9M, OpenCLIP ViT-H/14 text tower 340.4M, ``v`` prediction: its
OLSS schedules are fitted on ``v`` outputs) at 768x768; ``--gpu-check`` is the SD 1.5 plan there.
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench.bench_model import BenchModel, parameter_counts, save_bench_model
from bench.step_profile import profile_requests
from devtools.host_sync import HostSync, detect_host_syncs
from devtools.sd_configs import SD15, SD21, SDXL, TINY, TINY_SD2, TINY_SDXL, ArchSpec
from olss_core.protocol import JobSpec
from olss_core.settings import Settings, load_settings
from workers.fast_path import GRAPHING_COMPILE_MODES, FastPathOptions, pick_device
from workers.guided_step import GuidedStep, extra_step_kwargs, run_steps
from workers.model_family import ModelFamily, pipeline_family
from workers.served_graphs import GraphMode
from workers.startup import LoadedModel, fast_path_options, load_model
from workers.text_encoding import Conditioning, micro_conditioning
from workers.warm_up import warm_up

PROMPT = "a photograph of an astronaut riding a horse on the moon"
GUIDANCE_SCALE = 7.5
TARGET_B1_ENGINE_S = 0.10
TARGET_B1_SERVICE_S = 0.12
TARGET_B8_IMAGES_PER_S = 25.0
TARGET_SERVICE_SHARE = 0.9
TARGET_COLD_START_S = 60.0
OPTIMISATIONS = ("fp16", "sdpa", "channels_last", "compile", "cuda_graphs")


@dataclass(frozen=True)
class Architecture:
    """A benchmarked family's architecture: its label, full-size spec, tiny spec and batches."""

    label: str
    full: ArchSpec
    tiny: ArchSpec
    batches: tuple[int, ...]


ARCHITECTURES = {
    ModelFamily.SD1: Architecture("SD 1.5", SD15, TINY, (1, 4, 8)),
    ModelFamily.SD2: Architecture("SD 2.1 (768-v)", SD21, TINY_SD2, (1, 4, 8)),
    ModelFamily.SDXL: Architecture("SDXL base", SDXL, TINY_SDXL, (1, 4)),
}
"""What ``--family`` picks; SDXL at batch 1 and 4 (issue 15)."""

# --------------------------------------------------------------------------- samplers


@dataclass(frozen=True)
class Sampler:
    """A sampler at a step count: ``kind`` is ``olss``, ``dpmsolver++`` or ``ddim``."""

    kind: str
    steps: int

    @property
    def name(self) -> str:
        return f"{self.kind}-{self.steps}"


OLSS5 = Sampler("olss", 5)
ALL_SAMPLERS = (
    OLSS5,
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


# --------------------------------------------------------------------------- configurations


@dataclass(frozen=True)
class Config:
    """A worker configuration: its name and the ``OLSS_*`` settings (lower case, no prefix) it
    sets on top of the device's default."""

    name: str
    settings: dict[str, Any] = field(default_factory=dict)


ALL_OFF = Config(
    "all off",
    {"fp16": False, "sdpa": False, "channels_last": False, "compile": False,
     "cuda_graphs": "off"},
)


def ablation_configs(device: torch.device) -> list[Config]:
    """The device's default with each optimisation switched, the other graph mode, and all off.

    fp16 is only switched on CUDA (the CPU runs fp32); compile has rows of its own
    (:func:`compile_config`), at several batch sizes."""
    default = FastPathOptions.for_device(device)
    configs = []
    for name in OPTIMISATIONS:
        if name == "compile" or (name == "fp16" and device.type != "cuda"):
            continue
        if name == "cuda_graphs":
            on = default.cuda_graphs is not GraphMode.OFF
            configs.append(Config(f"cuda_graphs {'off' if on else 'step'}",
                                  {"cuda_graphs": "off" if on else "step"}))
            configs.append(Config("cuda_graphs loop", {"cuda_graphs": "loop"}))
            continue
        value = not getattr(default, name)
        configs.append(Config(f"{name} {'on' if value else 'off'}", {name: value}))
    configs.append(ALL_OFF)
    return configs


def compile_config(mode: str) -> Config:
    """``torch.compile`` on top of the default; a mode that captures CUDA graphs of its own
    runs without the worker's."""
    settings: dict[str, Any] = {"compile": True, "compile_mode": mode}
    if mode in GRAPHING_COMPILE_MODES:
        settings["cuda_graphs"] = "off"
    return Config(f"compile on ({mode})", settings)


@dataclass
class Loaded:
    """A configuration loaded and warmed up, with its start-up times."""

    config: Config
    model: LoadedModel
    load_s: float
    warm_up_s: float


def load_config(
    bench: BenchModel, device: torch.device, work: Path, config: Config, batches: Sequence[int],
    tiny: bool,
) -> Loaded:
    """The worker's start-up for ``config``: settings, ``load_model``, warm-up at ``batches``."""
    settings = worker_settings(bench, device, work, config, batches)
    options = fast_path_options(settings, device)
    if tiny:
        options = replace(options, compile_backend="eager")  # traces, generates no code
    torch.compiler.set_stance("default")  # a previous configuration's warm-up froze it
    started = time.perf_counter()
    loaded = load_model(settings, str(bench.folder), options)
    loaded_at = time.perf_counter()
    warm_up(loaded.engine, loaded.key, loaded.engine.bank.schedules, loaded.warm_batch_sizes)
    loaded.finish_warm_up()
    _sync(device)
    return Loaded(config, loaded, loaded_at - started, time.perf_counter() - loaded_at)


def worker_settings(
    bench: BenchModel, device: torch.device, work: Path, config: Config, batches: Sequence[int]
) -> Settings:
    """The worker's settings: the model, its schedules, the cache, batch sizes, ``config``."""
    return load_settings(
        model=str(bench.folder), schedule_dir=bench.schedule_dir, cache_dir=work / "cache",
        device=str(device), max_batch_size=max(batches), batch_buckets=sorted(set(batches)),
        **config.settings,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _free(device: torch.device) -> None:
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------- timing


@dataclass
class Stat:
    median_ms: float
    p90_ms: float


@dataclass(frozen=True)
class Budget:
    """How long one cell may run: at least ``min_repeats``, at most ``repeats`` timed runs,
    stopping once ``seconds`` are spent; warm-ups likewise (at least one)."""

    warmup: int
    repeats: int
    min_repeats: int
    seconds: float


@dataclass
class Cell:
    """Timings of one (configuration, sampler, batch) combination."""

    config: str
    options: dict[str, Any]
    sampler: str
    steps: int
    batch: int
    guidance_scale: float
    load_s: float
    warm_up_s: float
    first_run_s: float
    warmup_runs: int
    repeats: int
    stages: dict[str, Stat]
    per_step_ms: float
    images_per_s: float
    graphs: int
    peak_memory_mib: float | None
    distinct_images: bool


def request_specs(loaded: LoadedModel, sampler: Sampler, batch: int, seed: int) -> list[JobSpec]:
    """``batch`` one-image jobs, as the service batches them."""
    width, height = loaded.engine.native_size
    return [
        JobSpec(model=loaded.key, prompt=f"{PROMPT} {n}", width=width, height=height,
                steps=sampler.steps, guidance_scale=GUIDANCE_SCALE, seed=seed + n,
                scheduler=sampler.kind)
        for n in range(batch)
    ]


def _stat(values: list[float]) -> Stat:
    ms = [v * 1000.0 for v in values]
    return Stat(
        median_ms=round(statistics.median(ms), 3), p90_ms=round(float(np.percentile(ms, 90)), 3)
    )


def time_cell(
    loaded: Loaded, device: torch.device, sampler: Sampler, batch: int, budget: Budget, seed: int
) -> Cell:
    engine = loaded.model.engine
    specs = request_specs(loaded.model, sampler, batch, seed)
    started = time.perf_counter()
    output = engine.generate(specs).output
    first_run_s = time.perf_counter() - started
    warmups, started = 1, time.perf_counter()
    while warmups < budget.warmup and time.perf_counter() - started < budget.seconds / 2:
        engine.generate(specs)
        warmups += 1
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    samples: list[dict[str, float]] = []
    started = time.perf_counter()
    while len(samples) < budget.repeats:
        wall_start = time.perf_counter()
        output = engine.generate(specs).output
        wall = time.perf_counter() - wall_start
        samples.append({**{str(k): v for k, v in output.durations.items()}, "wall": wall})
        if len(samples) >= budget.min_repeats and time.perf_counter() - started > budget.seconds:
            break
    stages = {
        name: _stat([s[name] for s in samples])
        for name in ("encode", "denoise", "decode", "total", "wall")
    }
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    images = [np.asarray(image).tobytes() for job in output.images for image in job]
    graphs = engine.inference.graphs
    return Cell(
        config=loaded.config.name,
        options=asdict(loaded.model.options),
        sampler=sampler.name,
        steps=sampler.steps,
        batch=batch,
        guidance_scale=GUIDANCE_SCALE,
        load_s=round(loaded.load_s, 3),
        warm_up_s=round(loaded.warm_up_s, 3),
        first_run_s=round(first_run_s, 3),
        warmup_runs=warmups,
        repeats=len(samples),
        stages=stages,
        per_step_ms=round(stages["denoise"].median_ms / sampler.steps, 3),
        images_per_s=round(batch / (stages["wall"].median_ms / 1000.0), 3),
        graphs=len(graphs.keys) if graphs is not None else 0,
        peak_memory_mib=round(peak, 1) if peak is not None else None,
        distinct_images=len(set(images)) == len(images),
    )


def reference_pixels(loaded: Loaded, seed: int) -> np.ndarray:
    """The first image of a batch-1 OLSS-5 request, to compare configurations' outputs."""
    spec = request_specs(loaded.model, OLSS5, 1, seed)
    image = loaded.model.engine.generate(spec).output.images[0][0]
    return np.asarray(image, dtype=np.int16)


# --------------------------------------------------------------------------- sync check


@dataclass
class SyncReport:
    """Host-device synchronisations per denoising step of the served step with ``sampler``.

    ``first_run`` is the first run with a fresh scheduler (one-time uploads show up there);
    ``steady`` is the next one, what a request on a warm worker sees.
    """

    sampler: str
    method: str
    first_run_per_step: list[int]
    steady_per_step: list[int]
    examples: list[str] = field(default_factory=list)

    @property
    def steady_total(self) -> int:
        return sum(self.steady_per_step)


def sync_check(loaded: LoadedModel, sampler: Sampler, seed: int) -> SyncReport:
    """Count host-device syncs per step of ``workers.guided_step.GuidedStep`` (batch 1, CFG).

    On CUDA the worker's UNet runs under the CUDA runtime's sync debug mode. Elsewhere a copy of
    it on the meta device stands in for the accelerator: the check then sees every value read
    of, and every copy to, "device" memory, as a GPU run would (:mod:`devtools.host_sync`).
    """
    pipe = loaded.engine.inference.pipe
    if loaded.device.type == "cuda":
        unet, device, method = pipe.unet, loaded.device, "cuda sync debug mode"
    else:
        unet = copy.deepcopy(pipe.unet).to("meta")
        device, method = torch.device("meta"), "meta-device stand-in (op hooks)"
    _, bank_scheduler = loaded.engine.bank.get(sampler.kind, sampler.steps, GUIDANCE_SCALE)
    scheduler = type(bank_scheduler).from_config(bank_scheduler.config)
    dtype = unet.dtype
    cond = guided_zero_conditioning(pipe, device, dtype)
    size, channels = unet.config.sample_size, unet.config.in_channels
    generator = torch.Generator("cpu").manual_seed(seed)
    runs: list[list[list[HostSync]]] = []
    with torch.no_grad():  # not inference mode: under it the meta stand-in misses scalar reads
        for _ in range(2):
            scheduler.set_timesteps(sampler.steps, device=device)
            latents = torch.randn(1, channels, size, size, generator=generator, dtype=dtype)
            latents = latents.to(device)
            latents = latents * scheduler.init_noise_sigma
            step = GuidedStep(unet, scheduler, GUIDANCE_SCALE, None,
                              extra_step_kwargs(scheduler, generator))
            found: list[list[HostSync]] = []
            for i in range(len(scheduler.timesteps)):
                with detect_host_syncs(device) as syncs:
                    latents = run_steps(step, latents, cond, range(i, i + 1))
                found.append(syncs)
            runs.append(found)
    counted = "cuda" if device.type == "cuda" else "hooks"
    first, steady = ([sum(1 for s in step if s.source == counted) for step in run] for run in runs)
    examples = sorted({f"{s.op} @ {s.where}" for run in runs for step in run for s in step})
    return SyncReport(sampler.name, method, first, steady, examples[:6])


def guided_zero_conditioning(pipe: Any, device: torch.device, dtype: torch.dtype) -> Conditioning:
    """All-zero conditioning of one guided image (two UNet rows) in the shapes ``pipe``'s UNet
    takes: ``encoder_hidden_states`` of its cross-attention width and, for SDXL, the pooled
    ``text_embeds`` and the native size's micro-conditioning ``time_ids``."""
    tokens = pipe.tokenizer.model_max_length
    hidden = torch.zeros(2, tokens, pipe.unet.config.cross_attention_dim, device=device,
                         dtype=dtype)
    if not pipeline_family(pipe).added_conditioning:
        return Conditioning(hidden)
    pooled = torch.zeros(2, pipe.text_encoder_2.config.projection_dim, device=device, dtype=dtype)
    side = pipe.unet.config.sample_size * pipe.vae_scale_factor
    time_ids = torch.tensor([micro_conditioning(side, side)] * 2, dtype=dtype).to(device)
    return Conditioning(hidden, pooled, time_ids)


def sync_check_samplers(samplers: Sequence[Sampler]) -> list[Sampler]:
    """OLSS-5 and every other OLSS step count, and each peer kind once at its fewest steps
    (a peer's syncs repeat per step, so more steps only cost time)."""
    chosen: dict[str, Sampler] = {}
    for sampler in sorted({*samplers, OLSS5}, key=lambda s: (s.kind, s.steps)):
        key = sampler.name if sampler.kind == "olss" else sampler.kind
        chosen.setdefault(key, sampler)
    return sorted(chosen.values(), key=lambda s: (s.kind != "olss", s.kind, s.steps))


# --------------------------------------------------------------------------- the plan


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
    profile: bool = False
    service: bool = False
    service_clients: tuple[int, ...] = (1, 8, 32)
    service_requests: int = 128
    cold_start: bool = False
    time_budget_s: float | None = None

    @property
    def architecture(self) -> Architecture:
        return next(a for a in ARCHITECTURES.values() if self.spec in (a.full, a.tiny))

    @property
    def tiny(self) -> bool:
        return self.spec is self.architecture.tiny


TINY_BUDGET = Budget(warmup=1, repeats=2, min_repeats=2, seconds=0.5)


def plan_from_args(args: argparse.Namespace) -> Plan:
    arch = ARCHITECTURES[args.family]
    small, large = arch.batches[0], arch.batches[-1]
    if args.tiny:
        plan = Plan(arch.tiny, arch.batches, ALL_SAMPLERS, TINY_BUDGET, ablations=True,
                    compile=True, compile_mode=args.compile_mode, compile_batches=(1,))
    elif args.gpu_check and arch.full is SDXL:
        plan = Plan(SDXL, arch.batches, (OLSS5,), Budget(warmup=2, repeats=5, min_repeats=3,
                    seconds=3.0), ablations=False, compile=False, compile_mode=args.compile_mode,
                    compile_batches=(), time_budget_s=args.time_budget_s)
    elif args.gpu_check:
        plan = Plan(arch.full, (small, large), (OLSS5,), Budget(warmup=2, repeats=10,
                    min_repeats=5, seconds=3.0), ablations=True, compile=True,
                    compile_mode=args.compile_mode, compile_batches=(small, large), profile=True,
                    service=True, service_requests=96, cold_start=True,
                    time_budget_s=args.time_budget_s)
    elif args.quick:
        plan = Plan(arch.full, (small, large), (OLSS5, Sampler("dpmsolver++", 20)),
                    Budget(warmup=2, repeats=5, min_repeats=3, seconds=3.0), ablations=True,
                    compile=True, compile_mode=args.compile_mode, compile_batches=(1,))
    else:
        plan = Plan(arch.full, arch.batches, ALL_SAMPLERS,
                    Budget(warmup=3, repeats=10, min_repeats=3, seconds=4.0), ablations=True,
                    compile=True, compile_mode=args.compile_mode,
                    compile_batches=(small, large))
    overrides: dict[str, Any] = {}
    if args.batches:
        overrides["batches"] = tuple(args.batches)
    if args.samplers:
        overrides["samplers"] = tuple(args.samplers)
    if args.repeats:
        overrides["budget"] = replace(plan.budget, repeats=args.repeats,
                                      min_repeats=min(plan.budget.min_repeats, args.repeats))
    if args.no_compile:
        overrides["compile"] = False
    if args.no_ablations:
        overrides["ablations"] = False
    if args.profile:
        overrides["profile"] = True
    if args.service:
        overrides["service"] = True
    if args.service_clients:
        overrides["service_clients"] = tuple(args.service_clients)
    if args.service_requests:
        overrides["service_requests"] = args.service_requests
    if args.cold_start:
        overrides["cold_start"] = True
    return replace(plan, **overrides)


# --------------------------------------------------------------------------- the run


class Run:
    """One benchmark run: its results so far, saved after every part as the JSON and its Markdown
    tables beside it (a run stopped by its time limit, or killed, keeps what it measured)."""

    def __init__(self, plan: Plan, device: torch.device, out: Path | None,
                 log: Callable[[str], None]) -> None:
        self.plan, self.device, self.out, self.log = plan, device, out, log
        self.started = time.perf_counter()
        self.cells: list[Cell] = []
        self.result: dict[str, Any] = {
            "meta": {}, "cells": [], "ablations": [], "image_checks": [], "sync_check": [],
            "profiles": [], "service": None, "compile_warm_up_s": None, "cold_start": None,
            "targets": {}, "skipped": [], "errors": [],
        }

    def over_budget(self, part: str) -> bool:
        limit = self.plan.time_budget_s
        if limit is not None and time.perf_counter() - self.started > limit:
            self.result["skipped"].append(f"{part}: over the {limit:g} s time budget")
            self.log(self.result["skipped"][-1])
            return True
        return False

    def add(self, cell: Cell) -> None:
        self.cells.append(cell)
        self.result["cells"].append(asdict(cell))
        self.log(_cell_line(cell))
        self.save()

    def error(self, part: str, error: Exception) -> None:
        self.result["errors"].append(f"{part}: {type(error).__name__}: {error}")
        self.log(self.result["errors"][-1])
        self.save()

    def save(self) -> None:
        self.result["meta"]["duration_s"] = round(time.perf_counter() - self.started, 1)
        self.result["ablations"] = ablation_rows(self.cells)
        self.result["targets"] = targets(self.result, self.plan, self.device)
        if self.out is not None:
            self.out.parent.mkdir(parents=True, exist_ok=True)
            self.out.write_text(json.dumps(self.result, indent=2) + "\n", encoding="utf-8")
            self.out.with_suffix(".md").write_text(format_table(self.result) + "\n",
                                                   encoding="utf-8")


def run_benchmark(
    plan: Plan, device: torch.device, seed: int, log: Callable[[str], None],
    out: Path | None = None,
) -> dict[str, Any]:
    run = Run(plan, device, out, log)
    tiny = plan.tiny
    olss_steps = sorted({s.steps for s in plan.samplers if s.kind == "olss"} | {5})
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log(f"saving {plan.spec.name} and fitting OLSS schedules {olss_steps}")
        dtype = torch.float16 if device.type == "cuda" else torch.float32
        bench = save_bench_model(plan.spec, work, olss_steps, device, dtype, seed)
        default = Config("default")
        loaded = load_config(bench, device, work, default, plan.batches, tiny)
        run.result["meta"] = _meta(plan, device, loaded, seed)
        for sampler in sync_check_samplers(plan.samplers):
            report = sync_check(loaded.model, sampler, seed)
            run.result["sync_check"].append({**asdict(report), "steady_total": report.steady_total})
            log(f"sync check {sampler.name}: steady per step {report.steady_per_step}")
        for batch in plan.batches:
            for sampler in plan.samplers:
                run.add(time_cell(loaded, device, sampler, batch, plan.budget, seed))
        reference = reference_pixels(loaded, seed)
        if plan.profile:
            _profile(run, loaded, bench, work, seed)
        del loaded
        _free(device)
        if plan.compile and plan.compile_batches and not run.over_budget("compile"):
            _compile_rows(run, bench, work, seed, tiny)
        if plan.ablations:
            _ablations(run, bench, work, seed, reference, tiny)
        if plan.service and not run.over_budget("service"):
            _service(run, bench, work)
        if plan.cold_start and not run.over_budget("cold start"):
            _cold_start(run, bench, work)
    run.save()
    return run.result


def _ablations(run: Run, bench: BenchModel, work: Path, seed: int, reference: np.ndarray,
               tiny: bool) -> None:
    plan, device = run.plan, run.device
    for config in ablation_configs(device):
        if run.over_budget(f"ablation {config.name}"):
            return
        try:
            loaded = load_config(bench, device, work, config, (1,), tiny)
            run.add(time_cell(loaded, device, OLSS5, 1, plan.budget, seed))
            diff = int(np.abs(reference_pixels(loaded, seed) - reference).max())
            run.result["image_checks"].append(
                {"config": config.name, "max_pixel_diff_vs_default": diff}
            )
        except Exception as error:  # one configuration that fails must not lose the run
            run.error(f"ablation {config.name}", error)
        finally:
            loaded = None
            _free(device)


def _compile_rows(run: Run, bench: BenchModel, work: Path, seed: int, tiny: bool) -> None:
    plan, device = run.plan, run.device
    config = compile_config(plan.compile_mode)
    try:
        loaded = load_config(bench, device, work, config, plan.compile_batches, tiny)
        run.result["compile_warm_up_s"] = round(loaded.warm_up_s, 1)
        for batch in plan.compile_batches:
            run.add(time_cell(loaded, device, OLSS5, batch, plan.budget, seed))
    except Exception as error:
        run.error("compile", error)
    finally:
        loaded = None
        _free(device)


def _profile(run: Run, loaded: Loaded, bench: BenchModel, work: Path, seed: int) -> None:
    """Profile batch-1 OLSS-5 with the default configuration and, when the default graphs the
    loop, with graphs off (the eager loop whose launches the graphs remove)."""
    device = run.device
    profiles = [(loaded.config.name, loaded)]
    if loaded.model.options.cuda_graphs is not GraphMode.OFF:
        eager = load_config(bench, device, work, Config("cuda_graphs off", {"cuda_graphs": "off"}),
                            (1,), run.plan.tiny)
        profiles.append((eager.config.name, eager))
    for name, each in profiles:
        engine, specs = each.model.engine, request_specs(each.model, OLSS5, 1, seed)
        engine.generate(specs)
        report = profile_requests(partial(engine.generate, specs), device)
        run.result["profiles"].append({"config": name, "batch": 1, **asdict(report)})
        run.log(f"profile {name}: {_profile_line(asdict(report))}")
    run.save()


def _service(run: Run, bench: BenchModel, work: Path) -> None:
    """Gateway and worker processes on the device: each client count with the default worker,
    then the top two with ``OLSS_OVERLAP_RESULTS`` off."""
    from bench.load_client import LevelResult
    from bench.service_load import service

    plan = run.plan
    levels: list[LevelResult] = []
    body = {"scheduler": "olss", "steps": 5, "guidance_scale": GUIDANCE_SCALE}
    threads = str(max(1, (os.cpu_count() or 2) // 2))
    try:
        with service(bench.folder, bench.schedule_dir, work / "cache", threads) as svc:
            for config, extra, clients in (
                ("default", {}, plan.service_clients),
                ("overlap off", {"overlap_results": "false"}, plan.service_clients[-2:]),
            ):
                with svc.worker(max_batch_size=8, **extra):
                    for count in clients:
                        levels.append(svc.level(config, count, plan.service_requests, 8, body))
                        run.log(levels[-1].row())
            run.result["service"] = {
                "levels": [_level_dict(level) for level in levels],
                "worker_cold_start_s": [round(s, 1) for s in svc.cold_starts_s],
            }
    except Exception as error:
        run.error("service", error)
    run.save()


def _level_dict(level: Any) -> dict[str, Any]:
    return {
        "config": level.config, "clients": level.clients, "requests": len(level.samples),
        "images_per_s": round(level.throughput, 3), "e2e_p50_ms": round(level.e2e_p(0.5), 2),
        "e2e_p99_ms": round(level.e2e_p(0.99), 2),
        "overhead_p50_ms": round(level.overhead_p(0.5), 2),
        "mean_batch": round(statistics.mean(s.batch_size for s in level.samples), 2),
    }


def _cold_start(run: Run, bench: BenchModel, work: Path) -> None:
    """A compiled worker's start to ready twice on the run's compile cache: the first fills
    what the in-process compile did not, the second is the warm-cache start."""
    from bench.service_load import service

    plan = run.plan
    settings: dict[str, Any] = {"compile": "true", "compile_mode": plan.compile_mode,
                                "max_batch_size": max(plan.batches),
                                "batch_buckets": ",".join(map(str, plan.batches))}
    try:
        with service(bench.folder, bench.schedule_dir, work / "cache", "4") as svc:
            for _ in range(2):
                with svc.worker(**settings):
                    pass
            first, warm = svc.cold_starts_s
            run.result["cold_start"] = {"settings": settings, "first_s": round(first, 1),
                                        "warm_cache_s": round(warm, 1)}
            run.log(f"compiled worker start to ready: {first:.1f} s, then {warm:.1f} s warm")
    except Exception as error:
        run.error("cold start", error)
    run.save()


def _meta(plan: Plan, device: torch.device, loaded: Loaded, seed: int) -> dict[str, Any]:
    if device.type == "cuda":
        device_name = torch.cuda.get_device_name(device)
    else:
        device_name = f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    tiny = plan.tiny
    return {
        "model": plan.spec.name,
        "resolution": plan.spec.resolution,
        "parameters": parameter_counts(loaded.model.engine.inference.pipe),
        "weights_note": (
            "tiny configuration for testing the script; these numbers are not latency claims"
            if tiny
            else f"random weights with {plan.architecture.label}'s architecture: compute cost "
            "equals the real model's"
        ),
        "schedule_note": (
            "OLSS schedules fitted on the analytic Gaussian-mixture testbed (uniform path, "
            "DDIM-50 teacher): a step costs one UNet call whatever the coefficients"
        ),
        "served_path": "workers.startup.load_model + warm_up + ServingEngine.generate",
        "device": str(device),
        "device_name": device_name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "diffusers": __import__("diffusers").__version__,
        "default_options": asdict(loaded.model.options),
        "guidance_scale": GUIDANCE_SCALE,
        "seed": seed,
        "budget": asdict(plan.budget),
        "tiny": tiny,
        "timing": (
            "wall: perf_counter around ServingEngine.generate (its images are on the host); "
            "stages: " + ("CUDA events" if device.type == "cuda" else "perf_counter")
        ),
    }


def ablation_rows(cells: list[Cell]) -> list[dict[str, Any]]:
    """Each optimisation on vs off at batch 1 with OLSS-5, from cells of this run."""
    at_b1 = {c.config: c for c in cells if c.batch == 1 and c.sampler == OLSS5.name}
    base = at_b1.get("default")
    rows = []
    for name in OPTIMISATIONS:
        others = [c for key, c in at_b1.items() if key.startswith(f"{name} ")]
        if base is None or not others:
            rows.append({"optimisation": name, "measured": False})
            continue
        for other in others:
            base_on = _switched_on(base.options, name)
            on, off = (base, other) if base_on else (other, base)
            if _switched_on(other.options, name) and base_on:  # graphs step vs loop
                on, off = other, base
            rows.append(_ablation_row(f"{name} ({other.config})", on, off))
    all_off = at_b1.get(ALL_OFF.name)
    if base is not None and all_off is not None:
        rows.append(_ablation_row("all (default vs all off)", base, all_off))
    return rows


def _switched_on(options: dict[str, Any], name: str) -> bool:
    value = options[name]
    return value not in (False, "off")


def _ablation_row(label: str, on: Cell, off: Cell) -> dict[str, Any]:
    on_ms, off_ms = on.stages["wall"].median_ms, off.stages["wall"].median_ms
    return {
        "optimisation": label, "measured": True, "on_config": on.config,
        "off_config": off.config, "on_wall_median_ms": on_ms, "off_wall_median_ms": off_ms,
        "speedup": round(off_ms / on_ms, 3),
    }


def targets(result: dict[str, Any], plan: Plan, device: torch.device) -> dict[str, Any]:
    """The issue's targets, judged only for SD 1.5 on a GPU, on this run's numbers."""
    if plan.spec is not SD15 or device.type != "cuda":
        return {"judged": False, "reason": "targets apply to SD 1.5 shapes on a GPU"}
    cells = result["cells"]

    def best(batch: int) -> dict | None:
        found = [c for c in cells if c["batch"] == batch and c["sampler"] == OLSS5.name]
        return min(found, key=lambda c: c["stages"]["wall"]["median_ms"]) if found else None

    b1, b8 = best(1), best(8)
    judged: dict[str, Any] = {"judged": True}
    if b1:
        seconds = b1["stages"]["wall"]["median_ms"] / 1000
        judged["engine_b1_s"] = {"value": round(seconds, 4), "config": b1["config"],
                                 "target": TARGET_B1_ENGINE_S, "met": seconds <= TARGET_B1_ENGINE_S}
    if b8:
        rate = b8["images_per_s"]
        judged["engine_b8_images_per_s"] = {"value": rate, "config": b8["config"],
                                            "target": TARGET_B8_IMAGES_PER_S,
                                            "met": rate >= TARGET_B8_IMAGES_PER_S}
    service = result["service"] or {}
    levels = {(lv["config"], lv["clients"]): lv for lv in service.get("levels", [])}
    one = levels.get(("default", 1))
    if one:
        seconds = one["e2e_p50_ms"] / 1000
        judged["service_b1_s"] = {"value": seconds, "target": TARGET_B1_SERVICE_S,
                                  "met": seconds <= TARGET_B1_SERVICE_S}
    top = max((c for cfg, c in levels if cfg == "default"), default=None)
    default_b8 = next((c for c in cells if c["batch"] == 8 and c["config"] == "default"
                       and c["sampler"] == OLSS5.name), None)
    if top and default_b8:
        share = levels[("default", top)]["images_per_s"] / default_b8["images_per_s"]
        judged["service_share_of_engine"] = {"value": round(share, 3), "clients": top,
                                             "target": TARGET_SERVICE_SHARE,
                                             "met": share >= TARGET_SERVICE_SHARE}
    cold = result["cold_start"]
    if cold:
        judged["cold_start_warm_cache_s"] = {"value": cold["warm_cache_s"],
                                             "target": TARGET_COLD_START_S,
                                             "met": cold["warm_cache_s"] < TARGET_COLD_START_S}
    return judged


# --------------------------------------------------------------------------- output


def _cell_line(cell: Cell) -> str:
    s = cell.stages
    return (
        f"{cell.config:<22} {cell.sampler:<15} b{cell.batch:<2} "
        f"enc {s['encode'].median_ms:8.1f}  den {s['denoise'].median_ms:9.1f}  "
        f"dec {s['decode'].median_ms:8.1f}  wall {s['wall'].median_ms:9.1f} "
        f"(p90 {s['wall'].p90_ms:9.1f}) ms  {cell.images_per_s:7.2f} img/s"
    )


def _profile_line(report: dict[str, Any]) -> str:
    phases = ", ".join(f"{name.split('.')[-1]} {t['host_ms']:.1f}/{t['device_ms']:.1f}"
                       for name, t in report["phases"].items())
    if report["device_busy_ms"] is not None:
        split = (f"device busy {report['device_busy_ms']:.1f} ms, host launches "
                 f"{report['launch_ms']:.1f} ms, waits {report['wait_ms']:.1f} ms, "
                 f"other host {report['other_host_ms']:.1f} ms")
    else:
        split = (f"op time {report['op_self_ms']:.1f} ms, outside ops "
                 f"{report['outside_ops_ms']:.1f} ms")
    return f"wall {report['wall_ms']:.1f} ms: {split}; phases host/device ms: {phases}"


def format_table(result: dict[str, Any]) -> str:
    """The compact Markdown tables: printed last, and saved beside ``--out`` after every part."""
    meta = result["meta"]
    lines = [
        f"# {meta.get('model')} {meta.get('resolution')}x{meta.get('resolution')} on "
        f"{meta.get('device_name')} (torch {meta.get('torch')}); {meta.get('weights_note')}",
        "| config | sampler | batch | encode ms | denoise ms | decode ms | wall ms (p90) "
        "| img/s | graphs | peak MiB | warm-up s | n |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        s = c["stages"]
        peak = f"{c['peak_memory_mib']:.0f}" if c["peak_memory_mib"] is not None else "-"
        lines.append(
            f"| {c['config']} | {c['sampler']} | {c['batch']} | {s['encode']['median_ms']:.1f} "
            f"| {s['denoise']['median_ms']:.1f} | {s['decode']['median_ms']:.1f} "
            f"| {s['wall']['median_ms']:.1f} ({s['wall']['p90_ms']:.1f}) "
            f"| {c['images_per_s']:.2f} | {c['graphs']} | {peak} | {c['warm_up_s']:.1f} "
            f"| {c['repeats']} |"
        )
    lines += ["", "| optimisation (batch 1, olss-5) | on ms | off ms | speed-up |",
              "|---|---|---|---|"]
    for row in result["ablations"]:
        if row["measured"]:
            lines.append(f"| {row['optimisation']} | {row['on_wall_median_ms']:.1f} "
                         f"| {row['off_wall_median_ms']:.1f} | {row['speedup']:.2f}x |")
        else:
            lines.append(f"| {row['optimisation']} | - | - | not measured in this run |")
    if result["image_checks"]:
        lines += ["", "| config | max pixel difference to the default's image (seed 0) |",
                  "|---|---|"]
        lines += [f"| {c['config']} | {c['max_pixel_diff_vs_default']} |"
                  for c in result["image_checks"]]
    for profile in result["profiles"]:
        lines += ["", f"Profile ({profile['config']}, batch 1, olss-5): "
                  f"{_profile_line(profile)}"]
    if result["service"]:
        lines += ["", "| worker | clients | requests | img/s | e2e p50 / p99 ms | overhead p50 ms "
                  "| mean batch |", "|---|---|---|---|---|---|---|"]
        lines += [f"| {lv['config']} | {lv['clients']} | {lv['requests']} | "
                  f"{lv['images_per_s']:.2f} | {lv['e2e_p50_ms']:.1f} / {lv['e2e_p99_ms']:.1f} | "
                  f"{lv['overhead_p50_ms']:.1f} | {lv['mean_batch']:.1f} |"
                  for lv in result["service"]["levels"]]
    if result["cold_start"]:
        cold = result["cold_start"]
        lines += ["", f"Compiled worker start to ready: {cold['first_s']} s, then "
                  f"{cold['warm_cache_s']} s on the warm cache."]
    lines += ["", "| sampler | host syncs in the denoising loop: first run | warm (steady) "
              "| checked by |", "|---|---|---|---|"]
    for s in result["sync_check"]:
        lines.append(f"| {s['sampler']} | {_per_step(s['first_run_per_step'])} "
                     f"| {_per_step(s['steady_per_step'])} | {s['method']} |")
    judged = result["targets"]
    if judged.get("judged"):
        lines += ["", "| target | value | target | met |", "|---|---|---|---|"]
        lines += [f"| {name} | {t['value']} | {t['target']} | {'yes' if t['met'] else 'no'} |"
                  for name, t in judged.items() if isinstance(t, dict)]
    for note in result["skipped"] + result["errors"]:
        lines.append(f"\nnot measured: {note}")
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
    mode.add_argument("--gpu-check", action="store_true", help="the short issue-10 GPU run")
    parser.add_argument("--out", type=Path, help="write every number as JSON here, and the "
                        "tables beside it (.md), after every part")
    parser.add_argument(
        "--family", type=ModelFamily, choices=list(ARCHITECTURES), default=ModelFamily.SD1,
        help="the architecture: sd1 (SD 1.5, 512x512), sd2 (SD 2.1, v-prediction, 768x768) "
        "or sdxl (SDXL base, 1024x1024)",
    )
    parser.add_argument(
        "--device", help="cpu, cuda, cuda:1 (default: cuda if present; cpu with --tiny)"
    )
    parser.add_argument("--batches", type=int, nargs="+", help="override the batch sizes")
    parser.add_argument("--samplers", type=parse_sampler, nargs="+", help="e.g. olss-5 ddim-50")
    parser.add_argument("--repeats", type=int, help="timed runs per cell (at most)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile rows")
    parser.add_argument("--no-ablations", action="store_true", help="skip the on/off rows")
    parser.add_argument("--compile-mode", default="default", help="torch.compile mode")
    parser.add_argument("--profile", action="store_true", help="add torch.profiler reports")
    parser.add_argument("--service", action="store_true", help="add the gateway+worker levels")
    parser.add_argument("--service-clients", type=int, nargs="+", help="client counts")
    parser.add_argument("--service-requests", type=int, help="requests per client count")
    parser.add_argument("--cold-start", action="store_true",
                        help="add a compiled worker's start to ready, twice on one cache")
    parser.add_argument("--time-budget-s", type=float, default=420.0,
                        help="--gpu-check skips what is left after this long")
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
    if args.gpu_check and device.type != "cuda":
        raise SystemExit("--gpu-check needs a CUDA device")
    plan = plan_from_args(args)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    threads = args.threads or (1 if args.tiny else None)
    if threads:
        torch.set_num_threads(threads)
    result = run_benchmark(plan, device, args.seed, log, args.out)
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
