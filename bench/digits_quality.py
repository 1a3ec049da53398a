"""OLSS against diffusers' samplers on ``olss-digits``, a learned model.

For held-out (prompt, seed) pairs that no schedule was fitted on, every sampler starts from the
same unit noise and runs the standard diffusers loop on the same classifier-free-guided UNet
(:class:`schedules.calibration.GuidedModel`). Two numbers per sampler and step count:

* relative L2 error ``||x - x_ref|| / ||x_ref||`` of the final latents against a 200-step DDIM
  reference (:func:`schedules.heldout.relative_error`, over all pairs);
* accuracy of the digit classifier of :mod:`bench.digits_eval` on the decoded images.

OLSS rows (Duan et al., arXiv:2305.14677): ``closed-loop`` (the registry's schedules when present,
else fitted here), ``paper`` and ``uniform`` (OLSS-P), fitted here by
:func:`schedules.calibration.calibrate` with the same prompts, teacher and seed as the shipped
schedules. Peers: DDIM, Euler, DPM-Solver++(2M), UniPC and DEIS from the model's scheduler config.

    .venv/bin/python -m bench.digits_quality --out bench/results/digits_quality.json
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers import DDIMScheduler, DEISMultistepScheduler, StableDiffusionPipeline

from bench.digits_eval import EvalCase, accuracy, eval_cases
from schedules.samplers import build_sampler
from schedules.schedule_file import Method

PEERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "DDIM": functools.partial(build_sampler, "ddim"),
    "Euler": functools.partial(build_sampler, "euler"),
    "DPM-Solver++(2M)": functools.partial(build_sampler, "dpmsolver++"),
    "UniPC": functools.partial(build_sampler, "unipc"),
    "DEIS": DEISMultistepScheduler.from_config,
}
OLSS_METHODS = tuple(Method)
DEFAULT_STEPS = (4, 5, 6, 8, 10)
REFERENCE_STEPS = 200
HELDOUT_SEED_OFFSET = 50_000


@dataclass(frozen=True)
class Row:
    """One sampler at one step count."""

    sampler: str
    steps: int
    rel_l2: float
    accuracy: float


@dataclass(frozen=True)
class DigitsTable:
    """The olss-digits comparison and the settings that produced it."""

    model: str
    guidance_scale: float
    num_pairs: int
    reference: str
    reference_accuracy: float
    teacher: str
    rows: list[Row]
    seconds: float

    def to_markdown(self) -> str:
        """A markdown table: one line per sampler, ``rel. L2 / accuracy`` per step count."""
        steps = sorted({row.steps for row in self.rows})
        samplers = list(dict.fromkeys(row.sampler for row in self.rows))
        cell = {(row.sampler, row.steps): row for row in self.rows}
        header = "| sampler | " + " | ".join(f"{k} steps" for k in steps) + " |"
        lines = [header, "|---|" + "---|" * len(steps)]
        for name in samplers:
            values = []
            for k in steps:
                row = cell.get((name, k))
                values.append(f"{row.rel_l2:.3f} / {row.accuracy:.0%}" if row else "-")
            lines.append(f"| {name} | " + " | ".join(values) + " |")
        return "\n".join(lines)


def load_pipeline(model: str) -> StableDiffusionPipeline:
    """The pipeline for an embedded name or a folder, on CPU, fp32, progress bars off."""
    from workers.embedded_model import resolve_model

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(model))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def olss_schedules(
    pipe: StableDiffusionPipeline,
    model: str,
    steps: Sequence[int],
    guidance_scale: float,
    prompts: Sequence[str],
    num_validation: int,
    teacher: str,
    seed: int,
    methods: Sequence[Method] = OLSS_METHODS,
) -> dict[str, dict[int, Any]]:
    """Schedules per method and step count: closed-loop from the registry if it has them all,
    everything else fitted with :func:`schedules.calibration.calibrate`."""
    from schedules import ScheduleNotFound, ScheduleRegistry
    from schedules.calibration import CalibrationConfig, calibrate

    registry = ScheduleRegistry.default()
    found: dict[str, dict[int, Any]] = {}
    for method in methods:
        if method == "closed-loop":
            try:
                found[method] = {
                    k: registry.get(model, k, guidance_scale, method=method) for k in steps
                }
                continue
            except ScheduleNotFound:
                pass
        config = CalibrationConfig(
            num_steps=list(steps),
            teacher=teacher,
            guidance_scale=guidance_scale,
            seed=seed,
            num_validation=num_validation,
            method=method,
        )
        fitted = calibrate(pipe, prompts, config, model_id=model, progress=False)
        found[method] = {s.num_steps: s for s in fitted}
    return found


@torch.no_grad()
def decode(pipe: StableDiffusionPipeline, latents: torch.Tensor) -> np.ndarray:
    """Latents -> images ``(N, H, W, 3)`` in [0, 1], as the pipeline would return them."""
    images = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    return pipe.image_processor.postprocess(images, output_type="np")


def digits_table(
    model: str = "olss-digits",
    steps: Sequence[int] = DEFAULT_STEPS,
    olss_steps: Sequence[int] = (4, 5, 6, 8),
    guidance_scale: float | None = None,
    num_pairs: int = 100,
    prompts_file: str | None = None,
    num_validation: int = 10,
    teacher: str = "ddim:100",
    seed: int = 0,
) -> DigitsTable:
    """Compare OLSS with diffusers' samplers on held-out pairs of ``model`` (see module doc).

    Args:
        model: embedded name or diffusers folder.
        steps: step counts for the diffusers samplers.
        olss_steps: step counts for OLSS (those calibrated).
        guidance_scale: CFG scale (default: the model's ``olss_defaults.json``, else 4).
        num_pairs: held-out (prompt, seed) pairs, seeds from 50,000 on.
        prompts_file: calibration prompts (default: the model folder's
            ``calibration_prompts.txt``).
        num_validation, teacher, seed: as for ``olss calibrate``.
    """
    from schedules.calibration import GuidedModel, load_prompts
    from schedules.heldout import relative_error
    from schedules.sampling import run_sampler
    from workers.embedded_model import model_defaults, resolve_model

    start = time.perf_counter()
    folder = Path(resolve_model(model))
    if guidance_scale is None:
        guidance_scale = model_defaults(model).guidance_scale or 4.0
    prompts = load_prompts(prompts_file or folder / "calibration_prompts.txt")
    pipe = load_pipeline(model)
    config = dict(pipe.scheduler.config)

    schedules = olss_schedules(
        pipe, model, olss_steps, guidance_scale, prompts, num_validation, teacher, seed
    )

    cases: list[EvalCase] = eval_cases(num_pairs, seed_offset=HELDOUT_SEED_OFFSET)
    digits = [case.digit for case in cases]
    with torch.no_grad():
        cond, uncond = pipe.encode_prompt(
            [case.prompt for case in cases], pipe.device, 1, True, [""] * len(cases)
        )
    model_fn = GuidedModel(pipe, cond, uncond, guidance_scale, batch_size=len(cases))
    size = pipe.unet.config.sample_size
    noise = torch.stack(
        [
            torch.randn(
                (pipe.unet.config.in_channels, size, size),
                generator=torch.Generator().manual_seed(case.seed),
            )
            for case in cases
        ]
    )

    reference = run_sampler(DDIMScheduler.from_config(config), model_fn, noise, REFERENCE_STEPS)
    reference_accuracy = accuracy(decode(pipe, reference), digits)
    rows: list[Row] = []

    def measure(name: str, scheduler: Any, k: int) -> None:
        final = run_sampler(scheduler, model_fn, noise, k)
        rows.append(
            Row(name, k, relative_error(final, reference), accuracy(decode(pipe, final), digits))
        )

    from schedules.scheduler import OLSSScheduler

    for method, by_steps in schedules.items():
        for k in olss_steps:
            measure(f"OLSS {method}", OLSSScheduler.from_schedule(by_steps[k]), k)
    for name, factory in PEERS.items():
        for k in steps:
            measure(name, factory(config), k)
    return DigitsTable(
        model=model,
        guidance_scale=guidance_scale,
        num_pairs=num_pairs,
        reference=f"DDIM {REFERENCE_STEPS} steps",
        reference_accuracy=reference_accuracy,
        teacher=teacher,
        rows=rows,
        seconds=time.perf_counter() - start,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: print the table as markdown; ``--out`` also writes it as JSON."""
    parser = argparse.ArgumentParser(description="OLSS vs diffusers samplers on olss-digits")
    parser.add_argument("--model", default="olss-digits")
    parser.add_argument("--steps", type=int, nargs="+", default=list(DEFAULT_STEPS))
    parser.add_argument("--olss-steps", type=int, nargs="+", default=[4, 5, 6, 8])
    parser.add_argument("--guidance", type=float, default=None)
    parser.add_argument("--pairs", type=int, default=100)
    parser.add_argument("--prompts", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    table = digits_table(
        model=args.model,
        steps=args.steps,
        olss_steps=args.olss_steps,
        guidance_scale=args.guidance,
        num_pairs=args.pairs,
        prompts_file=args.prompts,
    )
    print(
        f"{table.model}, guidance {table.guidance_scale:g}, {table.num_pairs} held-out pairs, "
        f"reference {table.reference} (accuracy {table.reference_accuracy:.0%}), "
        f"{table.seconds:.0f} s; cells: rel. L2 to reference / classifier accuracy"
    )
    print(table.to_markdown())
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(asdict(table), indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
