"""Time ``olss calibrate`` with its default settings on Stable Diffusion 1.5's architecture.

Issue 9's cost target: calibrating the SD 1.5 architecture at 512x512 for 4/5/6/8 steps with
the default :class:`schedules.calibration.CalibrationConfig` takes at most 5 minutes on an
H100-class GPU. The model is :mod:`bench.bench_model`'s random-weights pipeline (same compute as
the real one; the schedules it yields mean nothing), so nothing is downloaded. It gets the
worker's default fast path for the device (:func:`workers.fast_path.apply_fast_path`: fp16,
SDPA attention and a channels-last UNet on CUDA, fp32 on CPU), since a worker calibrates the
model it has loaded to serve. ``--tiny`` swaps in
:data:`devtools.sd_configs.TINY` (32x32 images) for a CPU smoke run.

Prints, and with ``--out`` writes as JSON: the wall time and model evaluations of the whole run
(teacher, path search, held-out checks), from the last line ``calibrate`` logs. Every line
``calibrate`` logs is printed as it comes, after the seconds since the start, and its progress
bars go to stderr, so a run stopped by a time limit still shows how far it got.

    .venv/bin/python -m bench.calibration_time                 # GPU: the issue-9 row
    .venv/bin/python -m bench.calibration_time --tiny --device cpu
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from bench.bench_model import build_pipeline
from devtools.sd_configs import SD15, TINY
from workers.fast_path import FastPathOptions, apply_fast_path

COST_LINE = re.compile(
    r"calibration: (?P<total>\d+) model evaluations \(teacher (?P<teacher>\d+), search "
    r"(?P<search>\d+), held-out (?P<heldout>\d+)\) in (?P<seconds>\d+) s"
)


def time_calibration(tiny: bool, device: str, steps: Sequence[int] | None) -> dict[str, object]:
    """Build the pipeline, calibrate it with the defaults, and return the measured cost."""
    from schedules.calibration import CalibrationConfig, calibrate

    spec = TINY if tiny else SD15
    target = torch.device(device)
    with tempfile.TemporaryDirectory() as work:
        pipe = build_pipeline(spec, target, Path(work))
    pipe = apply_fast_path(pipe, target, FastPathOptions.for_device(target))
    config = CalibrationConfig() if steps is None else CalibrationConfig(num_steps=list(steps))
    lines: list[str] = []
    started = time.perf_counter()

    def log(line: str) -> None:
        lines.append(line)
        print(f"{time.perf_counter() - started:7.1f} s  {line}", flush=True)

    schedules = calibrate(pipe, None, config, model_id=spec.name, log=log)
    wall = time.perf_counter() - started
    match = next(m for m in map(COST_LINE.search, reversed(lines)) if m)
    return {
        "architecture": spec.name,
        "resolution": spec.resolution,
        "device": torch.cuda.get_device_name(target) if target.type == "cuda" else "cpu",
        "step_counts": config.step_counts,
        "guidance_scales": config.guidance_scales,
        "teacher": str(config.teacher),
        "schedules": len(schedules),
        "seconds": wall,
        "evaluations": int(match["total"]),
        **{f"{part}_evaluations": int(match[part]) for part in ("teacher", "search", "heldout")},
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="the tiny SD architecture (CPU)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, nargs="+", help="step counts (default: the config's)")
    parser.add_argument("--out", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    result = time_calibration(args.tiny, args.device, args.steps)
    print(
        f"{result['architecture']} {result['resolution']}px on {result['device']}: "
        f"{result['schedules']} schedules in {result['seconds']:.0f} s, "
        f"{result['evaluations']} model evaluations (teacher {result['teacher_evaluations']}, "
        f"search {result['search_evaluations']}, held-out {result['heldout_evaluations']})"
    )
    print(json.dumps(result, indent=1))
    if args.out is not None:
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
