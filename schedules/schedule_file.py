"""One fitted OLSS schedule as typed dataclasses, stored as a validated JSON file.

A schedule is what OLSS (Duan et al., "Optimal Linear Subspace Search", CIKM 2023,
arXiv:2305.14677) learns: k timesteps ``t_{p_0} > ... > t_{p_{k-1}}`` and, for each step i, the
i+2 coefficients of Eq. (7), ``x_{i+1} = w_{i,0} x_init + sum_{j<=i} w_{i,j+1} e_j``.

The dataclasses are pydantic dataclasses: constructing one, or loading a file, validates every
field, and a bad value raises :class:`ScheduleFileError` naming the file (or class), the field
path and the problem. Files are JSON, never pickle. This module imports neither torch, numpy nor
diffusers, so a torch-free process can read and list schedule files.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import re
import stat
from dataclasses import asdict, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    ConfigDict,
    Field,
    Strict,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

from schedules.model_identity import identity_digest

FORMAT_VERSION = 1
MAX_COEFFICIENT = 1e6
"""Largest coefficient magnitude a schedule file may hold: 100 times the search's ``max_coef``
(:data:`schedules.gram.DEFAULT_MAX_COEF`), room for a teacher-forced fit kept with a warning."""
MAX_FILE_BYTES = 1 << 20
"""Largest schedule file read (1 MiB); a valid one is a few KiB, even with its search report."""
MAX_NESTING = 32
"""Deepest JSON nesting a schedule file may have (a valid one has about 6 levels)."""
DEFAULT_NUM_TRAIN_TIMESTEPS = 1000
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample", "flow_prediction")
"""diffusers' ``prediction_type`` values: what the network outputs. OLSS is linear in the model
output whatever it is, so a schedule fits any of them, but only the one it was fitted on."""


class Method(StrEnum):
    """How a schedule was fitted (:func:`schedules.olss_search.search`)."""

    CLOSED_LOOP = "closed-loop"
    """Candidate paths fitted on the schedule's own samples; the best one wins (default)."""
    PAPER = "paper"
    """The paper's bisection on the error bound with a greedy walk (Sec. 3.3), teacher-forced."""
    UNIFORM = "uniform"
    """OLSS-P: evenly spaced teacher steps, teacher-forced."""


class ScheduleFileError(ValueError):
    """A schedule file (or dict) is malformed; the message names the file and the problem."""

    @classmethod
    def from_validation(cls, source: str, error: ValidationError) -> ScheduleFileError:
        """``<source>: invalid schedule: <field path>: <problem>; ...`` from pydantic's errors."""
        problems = "; ".join(dict.fromkeys(_problem(e) for e in error.errors(include_url=False)))
        return cls(f"{source}: invalid schedule: {problems}")


def _problem(error: Any) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error["loc"]).lstrip(".")
    if error["type"] == "missing":
        return f"missing field {where}"
    message = error["msg"].removeprefix("Value error, ")
    return f"{where}: {message}" if where else message


_T = TypeVar("_T")


def _file_errors(cls: type[_T]) -> type[_T]:
    """Make constructing ``cls`` raise :class:`ScheduleFileError` rather than pydantic's error."""
    validate = cls.__init__
    names = [f.name for f in fields(cls)]

    @functools.wraps(validate)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes {len(names)} arguments, got {len(args)}")
        try:  # positional arguments by name, so that errors name the field
            validate(self, **dict(zip(names, args, strict=False)), **kwargs)
        except ValidationError as error:
            raise ScheduleFileError.from_validation(f"<{cls.__name__}>", error) from None

    cls.__init__ = __init__  # type: ignore[misc]
    return cls


PositiveInt = Annotated[int, Strict(), Field(gt=0)]
FiniteFloat = Annotated[float, Strict(), Field(allow_inf_nan=False)]
FiniteError = Annotated[float, Strict(), Field(ge=0, allow_inf_nan=False)]
"""An error or a condition number: finite and >= 0 (diverged samplers are capped, not inf)."""
Coefficient = Annotated[
    float, Strict(), Field(ge=-MAX_COEFFICIENT, le=MAX_COEFFICIENT, allow_inf_nan=False)
]
Timestep = StrictInt | FiniteFloat
"""Integral timesteps stay ints (DDIM), others floats (Karras sigmas)."""
_EXACT = ConfigDict(extra="forbid")


@_file_errors
@dataclass(frozen=True, config=_EXACT)
class TeacherInfo:
    """The teacher sampler the schedule was distilled from.

    Args:
        scheduler_class: diffusers class name, e.g. ``"DDIMScheduler"``.
        config: the teacher scheduler's config (JSON-serialisable dict).
        num_steps: T, the number of teacher steps recorded.
    """

    scheduler_class: StrictStr
    config: dict[str, Any]
    num_steps: PositiveInt

    @field_validator("config")
    @classmethod
    def _integer_training_horizon(cls, config: dict[str, Any]) -> dict[str, Any]:
        horizon = config.get("num_train_timesteps", DEFAULT_NUM_TRAIN_TIMESTEPS)
        if isinstance(horizon, bool) or not isinstance(horizon, int) or horizon < 1:
            raise ValueError(f"num_train_timesteps must be a positive integer, got {horizon!r}")
        return config

    @property
    def num_train_timesteps(self) -> int:
        """The model's number of training timesteps (default 1000)."""
        return int(self.config.get("num_train_timesteps", DEFAULT_NUM_TRAIN_TIMESTEPS))


@_file_errors
@dataclass(frozen=True, config=_EXACT)
class ErrorStats:
    """Per-example final errors of a set of examples, beyond their mean.

    Args:
        num_examples: how many examples.
        mean: mean over examples of ``||x - x_T|| / ||x_T||``.
        p95: its 95th percentile.
        max: the largest.
        worst_condition: the condition (prompt or class) with the highest mean error.
        worst_condition_error: that condition's mean error.
    """

    num_examples: PositiveInt
    mean: FiniteError
    p95: FiniteError
    max: FiniteError
    worst_condition: StrictStr
    worst_condition_error: FiniteError


@_file_errors
@dataclass(frozen=True, config=_EXACT)
class FitCost:
    """What fitting a schedule cost (for a guidance grid: the whole grid at this step count).

    Args:
        evaluations: model evaluations, one guided output for one example (the path search, the
            refinement and the final fit; not the teacher runs).
        seconds: wall time of the search and the fit.
        calibration_evaluations: the whole calibration run's evaluations (every step count and
            guidance scale, teacher and held-out runs included), when calibrated end to end.
        calibration_seconds: that run's wall time.
    """

    evaluations: Annotated[int, Strict(), Field(ge=0)]
    seconds: FiniteError
    calibration_evaluations: Annotated[int, Strict(), Field(ge=0)] | None = None
    calibration_seconds: FiniteError | None = None


@_file_errors
@dataclass(frozen=True, config=_EXACT)
class HeldoutReport:
    """Final-sample error on examples the fit did not see (relative RMS vs the teacher).

    Args:
        num_examples: how many held-out examples were run.
        olss_error: ``||x_hat_k - x_T|| / ||x_T||`` for the OLSS schedule.
        peer_errors: the same error for diffusers samplers at the same step count, by name
            (e.g. ``"dpmsolver++(2M)"``, ``"unipc"``).
        best: name of the method with the lowest error (``"olss"`` or a peer name).
        note: plain-language verdict, saying so when OLSS is not the best.
        olss_stats: OLSS's per-example errors: mean, 95th percentile, worst condition.
    """

    num_examples: StrictInt
    olss_error: FiniteError
    peer_errors: dict[str, FiniteError]
    best: StrictStr
    note: StrictStr
    olss_stats: ErrorStats | None = None

    @property
    def best_peer(self) -> tuple[str, float] | None:
        """The peer with the lowest held-out error and that error (``None`` without peers)."""
        if not self.peer_errors:
            return None
        name = min(self.peer_errors, key=self.peer_errors.__getitem__)
        return name, self.peer_errors[name]

    @property
    def worse_than_best_peer(self) -> bool:
        """Whether some peer's held-out error is lower than OLSS's."""
        best = self.best_peer
        return best is not None and best[1] < self.olss_error


@_file_errors
@dataclass(frozen=True)
class GuidanceInterval:
    """Coefficients polynomial in the guidance scale, for scales from ``low`` to ``high``
    (:mod:`schedules.guidance_fit`): step i's weights at g are
    ``sum_p terms[i][p] ((g - center) / scale)^p``.

    Args:
        low: the lowest scale served with it (the schedule's own ``guidance_scale``).
        high: the highest (the next calibrated scale of the grid).
        center: g_0.
        scale: h > 0.
        terms: per step, ``degree + 1`` ragged rows of ``i + 2`` numbers each.
    """

    low: FiniteFloat
    high: FiniteFloat
    center: FiniteFloat
    scale: Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
    terms: list[list[list[Coefficient]]]

    @model_validator(mode="after")
    def _ordered_and_one_degree(self) -> GuidanceInterval:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low:g}) must be below high ({self.high:g})")
        degrees = {len(step) for step in self.terms}
        if len(degrees) != 1 or 0 in degrees:
            raise ValueError("every step needs the same number (>= 1) of polynomial terms")
        for i, step in enumerate(self.terms):
            if any(len(row) != i + 2 for row in step):
                raise ValueError(f"terms[{i}] rows must hold {i + 2} numbers (ragged rows)")
        return self


@_file_errors
@dataclass(frozen=True)
class Candidate:
    """One path the closed-loop search tried and its final closed-loop error.

    Args:
        name: where the path came from (``"paper"``, ``"uniform"``, ``"power2"``, ``"refine"``...).
        path: its teacher step indices.
        error: final relative error of its closed-loop fit; ``None`` when not finite.
    """

    name: StrictStr
    path: list[StrictInt]
    error: FiniteError | None


@_file_errors
@dataclass(frozen=True)
class FitReport:
    """How well the fit went.

    Args:
        path: teacher step indices ``p_0 = 0 < p_1 < ... < p_{k-1}`` the schedule uses.
        step_errors: per step i, relative RMS error of ``x_{i+1}`` against the teacher sample
            ``x_{p_{i+1}}`` on the fitting examples (the last entry is the final-sample error).
        condition_numbers: per step, condition number of the (column-scaled) normal matrix.
        heldout: error on held-out examples vs the teacher and peer samplers, if validated.
        candidates: for closed-loop search, every path tried with its final closed-loop error.
        warnings: plain-language problems with the fit (e.g. very large coefficients).
        fit_stats: final errors of the fitted examples (mean, 95th percentile, worst condition).
        validation: the same for calibration examples held out of the fit, if any.
        cost: model evaluations and wall time of the search and fit.
        guidance_grid: the guidance scales whose schedules share this path (a calibrated grid,
            see :mod:`schedules.guidance_blend`); empty when fitted alone.
    """

    path: list[StrictInt]
    step_errors: list[FiniteError]
    condition_numbers: list[FiniteError]
    heldout: HeldoutReport | None = None
    candidates: list[Candidate] = field(default_factory=list)
    warnings: list[StrictStr] = field(default_factory=list)
    fit_stats: ErrorStats | None = None
    validation: ErrorStats | None = None
    cost: FitCost | None = None
    guidance_grid: list[FiniteFloat] = field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _path_starts_at_zero_and_increases(cls, path: list[int]) -> list[int]:
        if not path or path[0] != 0 or any(b <= a for a, b in itertools.pairwise(path)):
            raise ValueError(f"must be strictly increasing teacher steps from 0, got {path}")
        return path

    @property
    def final_error(self) -> float:
        return self.step_errors[-1]


@_file_errors
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
        method: how it was fitted (a :class:`Method` or its value).
        fit_report: per-step errors, condition numbers, held-out validation.
        created_at: ISO-8601 UTC creation time.
        format_version: file format version (:data:`FORMAT_VERSION`).
        prediction_type: what the model outputs (one of :data:`PREDICTION_TYPES`); a file
            without it takes the teacher config's, else ``"epsilon"``.
        model_identity: the identity of the weights it was fitted on
            (:mod:`schedules.model_identity`); a file with one serves only that identity, a
            file without one (``""``, older files) any model with its ``model_id``.
        guidance_interval: how a guidance grid serves the scales between this schedule's and the
            next one's (:class:`GuidanceInterval`); ``None`` (older files, single schedules):
            linear interpolation of the two (:mod:`schedules.guidance_blend`).

    Physical ranges are checked too: timesteps within the teacher's training range
    ``0 <= t < num_train_timesteps`` (an integer in the teacher config, default 1000),
    coefficients at most :data:`MAX_COEFFICIENT` in magnitude, every reported error finite.
    """

    model_id: Annotated[str, Strict(), Field(min_length=1)]
    teacher: TeacherInfo
    guidance_scale: FiniteFloat
    resolution: tuple[PositiveInt, PositiveInt] | None
    num_examples: PositiveInt
    timesteps: Annotated[list[Timestep], Field(min_length=1)]
    coefficients: list[list[Coefficient]]
    init_noise_sigma: Annotated[float, Strict(), Field(gt=0, allow_inf_nan=False)]
    method: Method
    fit_report: FitReport
    created_at: StrictStr = field(
        default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds")
    )
    format_version: Literal[1] = FORMAT_VERSION
    prediction_type: StrictStr = ""
    model_identity: StrictStr = ""
    guidance_interval: GuidanceInterval | None = None

    @model_validator(mode="before")
    @classmethod
    def _files_state_version_and_date(cls, data: Any) -> Any:
        """A file (a dict) must say its format version and creation time; the constructor
        defaults them."""
        if isinstance(data, dict):
            missing = [name for name in ("format_version", "created_at") if name not in data]
            if missing:
                raise ValueError(f"missing field(s) {', '.join(missing)}")
        return data

    @field_validator("prediction_type")
    @classmethod
    def _known_prediction_type(cls, value: str) -> str:
        if value and value not in PREDICTION_TYPES:
            raise ValueError(f"must be one of {', '.join(PREDICTION_TYPES)}, got {value!r}")
        return value

    @field_validator("timesteps")
    @classmethod
    def _timesteps_decrease(cls, timesteps: list[int | float]) -> list[int | float]:
        for i, (before, after) in enumerate(itertools.pairwise(timesteps), start=1):
            if not after < before:
                raise ValueError(
                    f"must be strictly decreasing, but timesteps[{i}]={after} "
                    f">= timesteps[{i - 1}]={before}"
                )
        return timesteps

    @model_validator(mode="after")
    def _one_ragged_row_and_report_entry_per_step(self) -> Schedule:
        k = len(self.timesteps)
        if len(self.coefficients) != k:
            raise ValueError(
                f"coefficients must have one row per timestep ({k}), got {len(self.coefficients)}"
            )
        for i, row in enumerate(self.coefficients):
            if len(row) != i + 2:
                raise ValueError(
                    f"coefficients[{i}] must hold {i + 2} numbers (ragged rows), got {len(row)}"
                )
        interval = self.guidance_interval
        if interval is not None and (
            len(interval.terms) != k or abs(interval.low - self.guidance_scale) > 1e-9
        ):
            raise ValueError(
                f"guidance_interval must have {k} steps and start at guidance_scale "
                f"{self.guidance_scale:g}"
            )
        report = self.fit_report
        for name in ("path", "step_errors", "condition_numbers"):
            if len(getattr(report, name)) != k:
                raise ValueError(f"fit_report.{name} must be a list of {k} entries")
        horizon = self.teacher.num_train_timesteps
        outside = [t for t in self.timesteps if not 0 <= t < horizon]
        if outside:
            raise ValueError(
                f"timesteps must lie in the teacher's training range [0, {horizon}), got "
                f"{', '.join(f'{t:g}' for t in outside)}"
            )
        if not self.prediction_type:  # a file from before it was recorded, or the default
            teachers = self.teacher.config.get("prediction_type") or PREDICTION_TYPES[0]
            object.__setattr__(self, "prediction_type", teachers)
        if self.prediction_type != self.teacher.config.get("prediction_type", self.prediction_type):
            raise ValueError(
                f"prediction_type {self.prediction_type!r} differs from the teacher config's "
                f"{self.teacher.config['prediction_type']!r}"
            )
        return self

    def __len__(self) -> int:
        return len(self.timesteps)

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def name(self) -> str:
        """File stem used by the registry, e.g. ``tiny-sd__5steps__cfg7.5__closed-loop``; with
        a model identity the model part ends with its digest (``tiny-sd-1a2b3c4d__...``), so
        schedules of two models that share a name do not overwrite each other."""
        model = re.sub(r"[^A-Za-z0-9._-]+", "--", self.model_id).strip("-") or "model"
        if self.model_identity:
            model = f"{model}-{identity_digest(self.model_identity)}"
        return f"{model}__{self.num_steps}steps__cfg{self.guidance_scale:g}__{self.method}"

    def worse_than_best_peer(self) -> bool | None:
        """Whether a peer sampler had a lower held-out error than this schedule (``None``
        when the schedule was not validated on held-out examples)."""
        heldout = self.fit_report.heldout
        return None if heldout is None else heldout.worse_than_best_peer

    def check_prediction_type(self, prediction_type: str) -> None:
        """Raise ``ValueError`` unless the model predicts what this schedule was fitted on."""
        check_prediction_type(self.prediction_type, prediction_type, self.name)

    def with_heldout(self, heldout: HeldoutReport) -> Schedule:
        """A copy whose fit report carries ``heldout``."""
        return self.with_report(heldout=heldout)

    def with_report(self, **changes: Any) -> Schedule:
        """A copy whose fit report has ``changes`` (field names of :class:`FitReport`)."""
        return replace(self, fit_report=replace(self.fit_report, **changes))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["resolution"] = list(self.resolution) if self.resolution is not None else None
        data["method"] = self.method.value
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
        try:
            return _SCHEDULE.validate_python(data)
        except ValidationError as error:
            raise ScheduleFileError.from_validation(source, error) from None

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Schedule:
        """Read and validate a schedule file; raises :class:`ScheduleFileError` naming it."""
        path = Path(path)
        raw = read_schedule_bytes(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ScheduleFileError(f"{path}: not UTF-8 text: {exc}") from None
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except RecursionError:
            raise ScheduleFileError(
                f"{path}: JSON nested too deeply (at most {MAX_NESTING} levels)"
            ) from None
        except (json.JSONDecodeError, ValueError) as exc:
            raise ScheduleFileError(f"{path}: not valid JSON: {exc}") from exc
        if _nesting(data) > MAX_NESTING:
            raise ScheduleFileError(
                f"{path}: JSON nested too deeply (at most {MAX_NESTING} levels)"
            )
        return cls.from_dict(data, source=str(path))


_SCHEDULE = TypeAdapter(Schedule)


def read_schedule_bytes(path: Path) -> bytes:
    """The bytes of the schedule file ``path``: a regular file (after symlinks) of at most
    :data:`MAX_FILE_BYTES`, else :class:`ScheduleFileError` naming it.

    The file is opened non-blocking and checked with ``fstat`` on the open descriptor, so a
    FIFO (whose blocking open waits for a writer), a device (``/dev/zero`` never ends) or a
    file swapped in between a check and the open never gets read.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise ScheduleFileError(f"{path}: cannot read schedule file: {exc}") from exc
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ScheduleFileError(
                f"{path}: not a regular file ({_file_kind(info.st_mode)}); schedule files must "
                "be regular files"
            )
        if info.st_size > MAX_FILE_BYTES:
            raise ScheduleFileError(
                f"{path}: {info.st_size} bytes, more than the {MAX_FILE_BYTES} a schedule file "
                "may have"
            )
        chunks, size = [], 0
        while size <= MAX_FILE_BYTES:  # a file that grows while read stops past the cap
            chunk = os.read(fd, MAX_FILE_BYTES + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise ScheduleFileError(f"{path}: cannot read schedule file: {exc}") from exc
    finally:
        os.close(fd)
    if size > MAX_FILE_BYTES:
        raise ScheduleFileError(
            f"{path}: more than the {MAX_FILE_BYTES} bytes a schedule file may have"
        )
    return b"".join(chunks)


def _file_kind(mode: int) -> str:
    kinds = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR,
             "a character device"), (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))
    return next((name for test, name in kinds if test(mode)), f"mode {stat.filemode(mode)}")


def check_prediction_type(fitted: str, model: str, what: str = "this OLSS schedule") -> None:
    """Raise ``ValueError`` when a schedule fitted on ``fitted`` outputs is used with a model
    that predicts ``model`` (both diffusers ``prediction_type`` values)."""
    if fitted != model:
        raise ValueError(
            f"{what} was fitted on a model with prediction_type={fitted!r}; this model has "
            f"prediction_type={model!r}: fit a schedule for it (olss calibrate)"
        )


def _nesting(data: Any) -> int:
    """How deeply ``data`` nests lists and dicts (iteratively: no recursion limit)."""
    deepest, stack = 0, [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = list(value.values())
        if isinstance(value, list):
            deepest = max(deepest, depth)
            if depth <= MAX_NESTING:
                stack.extend((item, depth + 1) for item in value)
    return deepest


def _reject_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name} is not allowed")
