"""One fitted OLSS schedule as a typed dataclass, stored as a validated JSON file.

A schedule is what OLSS (Duan et al., "Optimal Linear Subspace Search", CIKM 2023,
arXiv:2305.14677) learns: k timesteps ``t_{p_0} > ... > t_{p_{k-1}}`` and, for each step i, the
i+2 coefficients of Eq. (7), ``x_{i+1} = w_{i,0} x_init + sum_{j<=i} w_{i,j+1} e_j``.

This module imports neither torch nor diffusers (json and the standard library only), so a
torch-free process can read and list schedule files. Files are JSON, never pickle; ``load``
validates every field and raises :class:`ScheduleFileError` naming the file and the problem.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

FORMAT_VERSION = 1
METHODS = ("closed-loop", "paper", "uniform")


class ScheduleFileError(ValueError):
    """A schedule file (or dict) is malformed; the message names the file and the problem."""


@dataclass(frozen=True)
class TeacherInfo:
    """The teacher sampler the schedule was distilled from.

    Args:
        scheduler_class: diffusers class name, e.g. ``"DDIMScheduler"``.
        config: the teacher scheduler's config (JSON-serialisable dict).
        num_steps: T, the number of teacher steps recorded.
    """

    scheduler_class: str
    config: dict[str, Any]
    num_steps: int


@dataclass(frozen=True)
class HeldoutReport:
    """Final-sample error on examples the fit did not see (relative RMS vs the teacher).

    Args:
        num_examples: how many held-out examples were run.
        olss_error: ``||x_hat_k - x_T|| / ||x_T||`` for the OLSS schedule.
        peer_errors: the same error for diffusers samplers at the same step count, by name
            (e.g. ``"dpmsolver++(2M)"``, ``"unipc"``).
        best: name of the method with the lowest error (``"olss"`` or a peer name).
        note: plain-language verdict, saying so when OLSS is not the best.
    """

    num_examples: int
    olss_error: float
    peer_errors: dict[str, float]
    best: str
    note: str


@dataclass(frozen=True)
class FitReport:
    """How well the fit went.

    Args:
        path: teacher step indices ``p_0 = 0 < p_1 < ... < p_{k-1}`` the schedule uses.
        step_errors: per step i, relative RMS error of ``x_{i+1}`` against the teacher sample
            ``x_{p_{i+1}}`` on the fitting examples (the last entry is the final-sample error).
        condition_numbers: per step, condition number of the (column-scaled) normal matrix.
        heldout: error on held-out examples vs the teacher and peer samplers, if validated.
        candidates: for closed-loop search, the final closed-loop error of every path tried.
        warnings: plain-language problems with the fit (e.g. very large coefficients).
    """

    path: list[int]
    step_errors: list[float]
    condition_numbers: list[float]
    heldout: HeldoutReport | None = None
    candidates: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def final_error(self) -> float:
        return self.step_errors[-1]


@dataclass(frozen=True)
class Schedule:
    """A fitted k-step OLSS schedule (see the module docstring for the math).

    Args:
        model_id: :func:`schedules.registry.model_key` of the model the schedule was fitted for.
        teacher: the teacher sampler (class, config, step count T).
        guidance_scale: classifier-free guidance scale used for the guided outputs.
        resolution: ``(height, width)`` in pixels, or ``None`` when not an image model.
        num_examples: N, the number of calibration examples fitted.
        timesteps: the k model timesteps ``t_{p_i}``, strictly decreasing.
        coefficients: ragged; row i holds the i+2 weights ``w_{i,0..i+1}``.
        init_noise_sigma: scale of the recorded initial sample relative to unit noise.
        method: ``"closed-loop"``, ``"paper"`` or ``"uniform"``.
        fit_report: per-step errors, condition numbers, held-out validation.
        created_at: ISO-8601 UTC creation time.
        format_version: file format version (:data:`FORMAT_VERSION`).
    """

    model_id: str
    teacher: TeacherInfo
    guidance_scale: float
    resolution: tuple[int, int] | None
    num_examples: int
    timesteps: list[int | float]
    coefficients: list[list[float]]
    init_noise_sigma: float
    method: str
    fit_report: FitReport
    created_at: str = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _validate(self.to_dict(), source="<Schedule>")

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def name(self) -> str:
        """File stem used by the registry, e.g. ``tiny-sd__5steps__cfg7.5__closed-loop``."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "--", self.model_id).strip("-") or "model"
        return f"{model}__{self.num_steps}steps__cfg{self.guidance_scale:g}__{self.method}"

    def with_heldout(self, heldout: HeldoutReport) -> Schedule:
        """A copy whose fit report carries ``heldout``."""
        return replace(self, fit_report=replace(self.fit_report, heldout=heldout))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution) if self.resolution is not None else None
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the schedule as JSON (atomically: a temp file then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(self.to_json() + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    @classmethod
    def from_dict(cls, data: Any, source: str = "<dict>") -> Schedule:
        """Validate ``data`` and build a schedule; :class:`ScheduleFileError` if it is bad."""
        _validate(data, source)
        report = data["fit_report"]
        heldout = report.get("heldout")
        return cls(
            model_id=data["model_id"],
            teacher=TeacherInfo(**data["teacher"]),
            guidance_scale=float(data["guidance_scale"]),
            resolution=tuple(data["resolution"]) if data["resolution"] is not None else None,
            num_examples=int(data["num_examples"]),
            timesteps=list(data["timesteps"]),
            coefficients=[[float(c) for c in row] for row in data["coefficients"]],
            init_noise_sigma=float(data["init_noise_sigma"]),
            method=data["method"],
            fit_report=FitReport(
                path=list(report["path"]),
                step_errors=[float(e) for e in report["step_errors"]],
                condition_numbers=[float(c) for c in report["condition_numbers"]],
                heldout=HeldoutReport(**heldout) if heldout is not None else None,
                candidates=list(report.get("candidates", [])),
                warnings=list(report.get("warnings", [])),
            ),
            created_at=data["created_at"],
            format_version=int(data["format_version"]),
        )

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Read and validate a schedule file; raises :class:`ScheduleFileError` naming it."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ScheduleFileError(f"{path}: cannot read schedule file: {exc}") from exc
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except (json.JSONDecodeError, ValueError) as exc:
            raise ScheduleFileError(f"{path}: not valid JSON: {exc}") from exc
        return cls.from_dict(data, source=str(path))


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return _is_number(value) and math.isfinite(value)


def _validate(data: Any, source: str) -> None:
    """Check every field of a schedule dict; raise :class:`ScheduleFileError` at the first error."""

    def fail(problem: str) -> NoReturn:
        raise ScheduleFileError(f"{source}: invalid schedule: {problem}")

    if not isinstance(data, dict):
        fail(f"expected a JSON object, got {type(data).__name__}")
    version = data.get("format_version")
    if version != FORMAT_VERSION:
        fail(f"format_version is {version!r}; this code reads version {FORMAT_VERSION}")
    required = [
        "model_id",
        "teacher",
        "guidance_scale",
        "resolution",
        "num_examples",
        "timesteps",
        "coefficients",
        "init_noise_sigma",
        "method",
        "fit_report",
        "created_at",
    ]
    missing = [key for key in required if key not in data]
    if missing:
        fail(f"missing field(s) {', '.join(missing)}")
    if not isinstance(data["model_id"], str) or not data["model_id"]:
        fail("model_id must be a non-empty string")
    teacher = data["teacher"]
    if not isinstance(teacher, dict) or set(teacher) != {"scheduler_class", "config", "num_steps"}:
        fail("teacher must be an object with scheduler_class, config and num_steps")
    if not isinstance(teacher["scheduler_class"], str) or not isinstance(teacher["config"], dict):
        fail("teacher.scheduler_class must be a string and teacher.config an object")
    if not isinstance(teacher["num_steps"], int) or teacher["num_steps"] < 1:
        fail(f"teacher.num_steps must be a positive integer, got {teacher['num_steps']!r}")
    if not _finite(data["guidance_scale"]):
        fail(f"guidance_scale must be a finite number, got {data['guidance_scale']!r}")
    resolution = data["resolution"]
    if resolution is not None and not (
        isinstance(resolution, (list, tuple))
        and len(resolution) == 2
        and all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in resolution)
    ):
        fail(f"resolution must be null or [height, width] positive integers, got {resolution!r}")
    if not isinstance(data["num_examples"], int) or data["num_examples"] < 1:
        fail(f"num_examples must be a positive integer, got {data['num_examples']!r}")
    timesteps = data["timesteps"]
    if not isinstance(timesteps, list) or not timesteps:
        fail("timesteps must be a non-empty list")
    if not all(_finite(t) for t in timesteps):
        fail(f"timesteps must be finite numbers, got {timesteps!r}")
    for i in range(1, len(timesteps)):
        if not timesteps[i] < timesteps[i - 1]:
            fail(
                f"timesteps must be strictly decreasing, but timesteps[{i}]={timesteps[i]} "
                f">= timesteps[{i - 1}]={timesteps[i - 1]}"
            )
    k = len(timesteps)
    coefficients = data["coefficients"]
    if not isinstance(coefficients, list) or len(coefficients) != k:
        got = len(coefficients) if isinstance(coefficients, list) else type(coefficients).__name__
        fail(f"coefficients must have one row per timestep ({k}), got {got}")
    for i, row in enumerate(coefficients):
        if not isinstance(row, list) or len(row) != i + 2:
            got = len(row) if isinstance(row, list) else type(row).__name__
            fail(f"coefficients[{i}] must hold {i + 2} numbers (ragged rows), got {got}")
        if not all(_finite(c) for c in row):
            fail(f"coefficients[{i}] has a non-finite or non-numeric value: {row!r}")
    if not _finite(data["init_noise_sigma"]) or data["init_noise_sigma"] <= 0:
        fail(f"init_noise_sigma must be a positive finite number, got {data['init_noise_sigma']!r}")
    if data["method"] not in METHODS:
        fail(f"method must be one of {', '.join(METHODS)}, got {data['method']!r}")
    if not isinstance(data["created_at"], str):
        fail("created_at must be an ISO-8601 string")
    _validate_report(data["fit_report"], k, fail)


def _validate_report(report: Any, k: int, fail: Any) -> None:
    if not isinstance(report, dict):
        fail("fit_report must be an object")
    for key in ("path", "step_errors", "condition_numbers"):
        if not isinstance(report.get(key), list) or len(report[key]) != k:
            fail(f"fit_report.{key} must be a list of {k} entries")
    path = report["path"]
    if not all(isinstance(p, int) and not isinstance(p, bool) for p in path) or path[0] != 0:
        fail(f"fit_report.path must be integers starting at 0, got {path!r}")
    if any(b <= a for a, b in itertools.pairwise(path)):
        fail(f"fit_report.path must be strictly increasing, got {path!r}")
    for key in ("step_errors", "condition_numbers"):
        values = report[key]
        if not all(_is_number(v) and not math.isnan(v) and v >= 0 for v in values):
            fail(f"fit_report.{key} must be non-negative numbers, got {values!r}")
    heldout = report.get("heldout")
    if heldout is not None:
        keys = {"num_examples", "olss_error", "peer_errors", "best", "note"}
        if not isinstance(heldout, dict) or set(heldout) != keys:
            fail(f"fit_report.heldout must be an object with {', '.join(sorted(keys))}")
        if not isinstance(heldout["peer_errors"], dict):
            fail("fit_report.heldout.peer_errors must be an object")
        values = [heldout["olss_error"], *heldout["peer_errors"].values()]
        if not all(_is_number(v) and not math.isnan(v) for v in values):
            fail("fit_report.heldout errors must be numbers")
    if not isinstance(report.get("candidates", []), list):
        fail("fit_report.candidates must be a list")
    warnings = report.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        fail("fit_report.warnings must be a list of strings")
