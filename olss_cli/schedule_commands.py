"""``olss calibrate`` and ``olss schedules list|show``: argparse subcommands.

:mod:`olss_cli.main` builds the ``olss`` parser and calls :func:`register`. This module imports
no ``schedules`` code at import time (the gateway image has none): ``list`` and ``show`` import
the torch-free registry when run, ``calibrate`` imports torch and diffusers. The writable
registry folder comes from ``Settings`` (``OLSS_SCHEDULE_DIR``, else the cache folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from olss_core.settings import load_settings

if TYPE_CHECKING:
    from schedules.registry import ScheduleRegistry
    from schedules.schedule_file import Schedule

SCHEDULE_DIR_SETTING = "OLSS_SCHEDULE_DIR"


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``calibrate`` and ``schedules {list,show}`` to an ``olss`` parser's subparsers."""
    calibrate = subparsers.add_parser(
        "calibrate",
        help="fit OLSS schedules for a model and write them to the registry",
        description="Run a teacher sampler on calibration prompts, fit OLSS schedules "
        "(arXiv:2305.14677, closed-loop by default) and write them as JSON schedule files.",
    )
    calibrate.add_argument(
        "--model", required=True, help="HF model id, local diffusers folder or embedded model name"
    )
    calibrate.add_argument(
        "--steps",
        type=int,
        nargs="+",
        help="schedule step counts (default: schedules.calibration.DEFAULT_STEPS, 4 5 6 8)",
    )
    calibrate.add_argument("--prompts", type=Path, help="prompt file, one per line")
    calibrate.add_argument(
        "--teacher",
        help="teacher sampler, name:T (default: schedules.teachers.DEFAULT_TEACHER, the "
        "measured choice in docs/BENCHMARKS.md)",
    )
    calibrate.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        help="CFG scale, or a grid of them that shares one path per step count and serves any "
        "scale in between (default: schedules.calibration.DEFAULT_GUIDANCE_GRID)",
    )
    calibrate.add_argument("--num-prompts", type=int, help="use the first N prompts")
    calibrate.add_argument(
        "--num-validation",
        type=int,
        help="held-out prompts, run at every guidance scale (default: "
        "schedules.calibration.DEFAULT_NUM_VALIDATION)",
    )
    calibrate.add_argument("--seed", type=int, default=0)
    calibrate.add_argument(
        "--batch-size",
        type=int,
        help="examples per UNet call (default: schedules.calibration.default_batch_size, 24 at "
        "512x512 and fewer for larger images)",
    )
    calibrate.add_argument(
        "--method", choices=["closed-loop", "paper", "uniform"], default="closed-loop"
    )
    calibrate.add_argument("--height", type=int, help="image height (default: model's native)")
    calibrate.add_argument("--width", type=int, help="image width (default: model's native)")
    calibrate.add_argument(
        "--max-evaluations",
        type=int,
        help="model evaluations (one guided output for one example) for the closed-loop path "
        "searches, all step counts together (default: "
        "schedules.calibration.DEFAULT_MAX_EVALUATIONS)",
    )
    calibrate.add_argument(
        "--search-examples",
        type=int,
        help="calibration examples the path search runs on (default: "
        "schedules.calibration.DEFAULT_SEARCH_EXAMPLES)",
    )
    calibrate.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    calibrate.add_argument(
        "--out",
        type=Path,
        help=f"registry folder to write (default: ${SCHEDULE_DIR_SETTING}, else the cache folder)",
    )
    calibrate.set_defaults(func=run_calibrate)

    schedules = subparsers.add_parser("schedules", help="inspect the schedule registry")
    actions = schedules.add_subparsers(dest="schedules_command", required=True)
    listing = actions.add_parser("list", help="list schedules in the registry")
    listing.add_argument(
        "--dir", type=Path, help=f"extra registry folder (default ${SCHEDULE_DIR_SETTING})"
    )
    listing.set_defaults(func=run_list)
    show = actions.add_parser("show", help="print one schedule file")
    show.add_argument("name", help="entry name from 'olss schedules list', or a JSON file path")
    show.add_argument(
        "--dir", type=Path, help=f"extra registry folder (default ${SCHEDULE_DIR_SETTING})"
    )
    show.set_defaults(func=run_show)


def run_calibrate(args: argparse.Namespace) -> int:
    import torch

    from schedules.calibration import CalibrationConfig, calibrate, load_prompts
    from schedules.model_identity import model_identity
    from schedules.registry import ScheduleRegistry
    from workers.embedded_model import resolve_model
    from workers.fast_path import read_pipeline

    prompts = load_prompts(args.prompts)
    if args.num_prompts is not None:
        held_out = args.num_validation
        if held_out is None:
            held_out = CalibrationConfig.num_validation
        if args.num_prompts <= held_out:
            print(
                f"error: --num-prompts {args.num_prompts} must exceed the {held_out} held-out "
                "prompts (--num-validation)",
                file=sys.stderr,
            )
            return 2
        prompts = prompts[: args.num_prompts]
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    source = resolve_model(args.model)
    pipe = read_pipeline(source, dtype).to(device)
    settings = load_settings()
    out = args.out or settings.writable_schedule_dir
    # The worker serves a file only to the model it was fitted on (schedules.model_identity).
    identity = model_identity(source, settings.cache_dir)
    given = {
        "num_steps": args.steps,
        "teacher": args.teacher,
        "guidance_scale": args.guidance,
        "num_validation": args.num_validation,
        "max_evaluations": args.max_evaluations,
        "search_examples": args.search_examples,
        "batch_size": args.batch_size,
    }
    config = CalibrationConfig(
        seed=args.seed,
        height=args.height,
        width=args.width,
        method=args.method,
        **{name: value for name, value in given.items() if value is not None},
    )
    lines: list[str] = []
    schedules = [replace(schedule, model_identity=identity) for schedule in
                 calibrate(pipe, prompts, config, model_id=args.model, log=lines.append)]
    registry = ScheduleRegistry(out)
    paths = [registry.put(schedule) for schedule in schedules]
    print(summary_table(schedules))  # the names the files have: with the identity's digest
    print(next(line for line in reversed(lines) if line.startswith("calibration:")))
    for path in paths:
        print(f"wrote {path}")
    return 0


def summary_table(schedules: list[Schedule]) -> str:
    """One row per schedule: steps, guidance, final fit error, held-out errors (OLSS's also per
    example: 95th percentile and worst condition), the winner and the search's evaluations."""
    header = ["name", "steps", "cfg", "fit err", "held-out olss", "p95 / worst", "peers", "best"]
    header.append("evals")
    rows = [header]
    for s in schedules:
        h = s.fit_report.heldout
        peers = ", ".join(f"{n} {e:.3g}" for n, e in h.peer_errors.items()) if h else "-"
        stats = h.olss_stats if h else None
        tail = f"{stats.p95:.3g} / {stats.worst_condition_error:.3g}" if stats else "-"
        cost = s.fit_report.cost
        rows.append(
            [
                s.name,
                str(s.num_steps),
                f"{s.guidance_scale:g}",
                f"{s.fit_report.final_error:.3g}",
                f"{h.olss_error:.3g}" if h else "-",
                tail,
                peers,
                h.best if h else "-",
                str(cost.evaluations) if cost else "-",
            ]
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    notes = [s.fit_report.heldout.note for s in schedules if s.fit_report.heldout]
    return "\n".join([*lines, *notes])


def _registry(extra_dir: Path | None) -> ScheduleRegistry:
    """The built-in registry plus ``extra_dir`` (default: the writable folder from Settings)."""
    from schedules.registry import ScheduleRegistry

    return ScheduleRegistry.default(extra_dir or load_settings().writable_schedule_dir)


def run_list(args: argparse.Namespace) -> int:
    registry = _registry(args.dir)
    entries = registry.list()
    if not entries:
        print("no schedules in " + ", ".join(str(r) for r in registry.roots))
        return 0
    rows = [["name", "model", "steps", "guidance", "method", "path"]]
    rows += [
        [e.name, e.model, str(e.steps), f"{e.guidance:g}", e.method, str(e.path)] for e in entries
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def run_show(args: argparse.Namespace) -> int:
    from schedules.registry import ScheduleNotFound
    from schedules.schedule_file import Schedule, ScheduleFileError

    try:
        if args.name.endswith(".json") and Path(args.name).is_file():
            schedule = Schedule.load(args.name)
        else:
            schedule = _registry(args.dir).find(args.name)
    except (ScheduleNotFound, ScheduleFileError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(schedule.to_dict(), indent=2))
    return 0
