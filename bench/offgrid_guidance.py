"""OLSS at guidance scales between a calibrated grid's points, on the analytic testbeds.

What a worker serves for a request at guidance g between two calibrated scales a < g < b is the
blend of their coefficients (:func:`schedules.guidance_blend.schedule_for_guidance`; the
least-squares coefficients of Eq. (7) of Duan et al., arXiv:2305.14677, move smoothly with the
guided output ``eps_u + g (eps_c - eps_u)``). For each mixture of :mod:`bench.olss_quality`
(exact Gaussian-mixture models, so every error is the sampler's own) this bench fits one grid
(:func:`schedules.olss_search.search_guidance_grid`: one path per step count, coefficients per
scale), then at each scale g between the grid points it scores, on held-out noises against a
1000-step DPM-Solver++(3M) reference (mean of ``||x - x_ref|| / ||x_ref||``):

* ``blend``: the blended schedule the worker serves;
* ``same path``: coefficients fitted at exactly g on the grid's path (closed loop,
  :func:`schedules.search` with ``path``): the issue's target is ``blend <= 1.3x`` this;
* ``own search``: a schedule searched at exactly g alone (its own path; what calibrating at g
  would give);
* ``nearest``: the nearest grid point's schedule unchanged (what a worker without blending
  serves);
* ``best peer``: the best diffusers sampler at its best spacing.

Run ``python -m bench.offgrid_guidance`` (two mixtures at 4 and 6 steps; ``--mixtures`` and
``--steps`` for more), ``--quick`` for a smoke run, ``--markdown`` for Markdown tables,
``--out results.json`` for the raw numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from bench.olss_quality import MIXTURES, PEERS, QUICK_MIXTURE, BenchConfig, Table, Testbed
from devtools.analytic import MixtureConfig
from schedules import search
from schedules.closed_loop import FitGroup
from schedules.guidance_blend import schedule_for_guidance
from schedules.olss_search import search_guidance_grid, search_steps
from schedules.schedule_file import Schedule

GRID = (1.5, 3.0, 5.0, 7.5, 12.0)
BETWEEN = (2.0, 4.0, 6.0, 10.0)
STEPS = (4, 6)
DEFAULT_MIXTURES = ("sharp-d16", "lowrank-d64")
TARGET = 1.3
"""Issue 9: the blend's error at most this times a schedule fitted at exactly that scale."""


@dataclass(frozen=True)
class OffGridResult:
    """One (mixture, guidance, steps) cell: mean held-out errors."""

    mixture: str
    guidance: float
    steps: int
    label: str
    blend: float
    same_path: float
    own_search: float
    nearest: float
    best_peer: float

    @property
    def ratio(self) -> float:
        """``blend / same_path``: the issue's target is <= :data:`TARGET`."""
        return self.blend / self.same_path


def mean_error(bed: Testbed, schedule: Schedule) -> float:
    return float(bed.olss_errors(schedule).mean())


def best_peer(bed: Testbed, steps: int) -> float:
    return min(
        float(bed.errors(peer.run(bed.heldout_fn, bed.heldout_noise, steps, spacing)).mean())
        for peer in PEERS
        for spacing in (peer.spacings if peer.timesteps_fn is None else ("ays",))
    )


def measure(cfg: BenchConfig, name: str, mixture: MixtureConfig, grid: Sequence[float],
            between: Sequence[float]) -> list[OffGridResult]:
    """Fit the grid for ``mixture``, then score every scale of ``between``."""
    beds = [Testbed(mixture, g, cfg) for g in grid]
    schedules = search_guidance_grid([FitGroup(b.traj, b.cal_fn) for b in beds], cfg.steps)
    results = []
    for guidance in between:
        bed = Testbed(mixture, guidance, cfg)
        own = {s.num_steps: s for s in search_steps(bed.traj, cfg.steps, bed.cal_fn)}
        for k in cfg.steps:
            at_k = [s for s in schedules if s.num_steps == k]
            choice = schedule_for_guidance(at_k, guidance)
            nearest = min(at_k, key=lambda s: (abs(s.guidance_scale - guidance), s.guidance_scale))
            same_path = search(bed.traj, k, bed.cal_fn, path=choice.schedule.fit_report.path)
            results.append(OffGridResult(
                name, guidance, k, choice.label, mean_error(bed, choice.schedule),
                mean_error(bed, same_path), mean_error(bed, own[k]), mean_error(bed, nearest),
                best_peer(bed, k),
            ))
            print(f"[{name} g={guidance:g} k={k}] {asdict(results[-1])}", file=sys.stderr,
                  flush=True)
    return results


def table(results: Sequence[OffGridResult], grid: Sequence[float]) -> Table:
    header = ["mixture", "g", "k", "blend", "same path", "blend / same path", "own search",
              "blend / own", "nearest", "best peer"]
    rows = [
        [r.mixture, f"{r.guidance:g}", str(r.steps), f"{r.blend:.2e}", f"{r.same_path:.2e}",
         f"{r.ratio:.2f}x", f"{r.own_search:.2e}", f"{r.blend / r.own_search:.2f}x",
         f"{r.nearest:.2e}", f"{r.best_peer:.2e}"]
        for r in results
    ]
    scales = ", ".join(f"{g:g}" for g in grid)
    return Table(f"Off-grid guidance, grid {scales}: mean held-out error", header, rows)


def summary(results: Sequence[OffGridResult]) -> str:
    worst = max(results, key=lambda r: r.ratio)
    missed = [r for r in results if r.ratio > TARGET]
    verdict = "met" if not missed else f"missed in {len(missed)} of {len(results)} cells"
    return (f"blend / same path: worst {worst.ratio:.2f}x ({worst.mixture} g={worst.guidance:g} "
            f"k={worst.steps}), median {sorted(r.ratio for r in results)[len(results) // 2]:.2f}x;"
            f" target <= {TARGET}x {verdict}")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (seconds)")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--mixtures", nargs="+", choices=list(MIXTURES),
                        default=list(DEFAULT_MIXTURES))
    parser.add_argument("--grid", nargs="+", type=float, default=list(GRID))
    parser.add_argument("--between", nargs="+", type=float, default=list(BETWEEN))
    parser.add_argument("--steps", nargs="+", type=int, default=list(STEPS))
    parser.add_argument("--calibration", type=int, default=256, help="calibration examples")
    parser.add_argument("--heldout", type=int, default=128, help="held-out examples")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    mixtures = {name: MIXTURES[name] for name in args.mixtures}
    grid, between = args.grid, args.between
    cfg = BenchConfig(steps=tuple(args.steps), mixtures=tuple(mixtures),
                      num_calibration=args.calibration, num_heldout=args.heldout)
    if args.quick:
        mixtures = {"quick-d8": QUICK_MIXTURE}
        grid, between = [3.0, 7.5], [5.0]
        cfg = BenchConfig(steps=(4,), mixtures=("quick-d8",), num_calibration=48,
                          num_heldout=16, teacher="dpmsolver++3m:50", reference_steps=200)
    started = time.perf_counter()
    results = [r for name, m in mixtures.items() for r in measure(cfg, name, m, grid, between)]
    seconds = time.perf_counter() - started
    out = table(results, grid)
    print(out.to_markdown() if args.markdown else out.to_text())
    print(summary(results))
    print(f"{seconds:.0f} s on {torch.get_num_threads()} thread(s); teacher {cfg.teacher}, "
          f"{cfg.num_calibration} calibration and {cfg.num_heldout} held-out examples")
    if args.out is not None:
        args.out.write_text(json.dumps({"config": asdict(cfg), "grid": list(grid),
                                        "results": [asdict(r) for r in results],
                                        "seconds": seconds}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
