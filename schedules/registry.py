"""Schedule registry: find a fitted OLSS schedule by model, step count and guidance scale.

A registry is a folder of schedule JSON files (see :mod:`schedules.schedule_file`). The package
ships a built-in one (``schedules/registry/``, package data); callers add a writable one that is
searched first (:meth:`ScheduleRegistry.default`; the service passes
``Settings.writable_schedule_dir``). Torch-free.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from schedules.schedule_file import Method, Schedule, ScheduleFileError

BUILTIN_DIR = Path(__file__).resolve().parent / "registry"
DEFAULT_GUIDANCE_TOLERANCE = 0.5

logger = logging.getLogger(__name__)


class ScheduleNotFound(LookupError):
    """No schedule matches the request; the message lists what is available."""


def model_key(model_id_or_path: str | os.PathLike[str]) -> str:
    """The registry key of a model.

    A Hugging Face id is kept as is (``"runwayml/stable-diffusion-v1-5"``); an existing local
    folder becomes its folder name (``/models/tiny-sd`` -> ``"tiny-sd"``).
    """
    text = os.fspath(model_id_or_path).rstrip("/\\") or os.fspath(model_id_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return path.resolve().name
    if text.startswith((".", "/", "~")) or "\\" in text or text.count("/") > 1:
        return path.name
    return text


@dataclass(frozen=True)
class RegistryEntry:
    """One schedule file in a registry."""

    name: str
    model: str
    steps: int
    guidance: float
    method: Method
    path: Path
    identity: str | None = None
    """The model identity the file was fitted for (:mod:`schedules.model_identity`); ``None``
    for a file that names its model only."""

    def serves(self, model: str, identity: str | None) -> bool:
        """Whether this file is for ``model`` (a model key) of ``identity``: a file with an
        identity serves only that identity, one without serves the model by name (and so does
        any file when the caller does not know the identity)."""
        if self.model != model:
            return False
        return self.identity is None or identity is None or self.identity == identity


class ScheduleRegistry:
    """Schedule files under one or more folders, looked up by ``(model, steps, guidance)``.

    Args:
        root: a folder, or several; earlier folders win when two hold the same schedule name.
        guidance_tolerance: largest ``|guidance - requested|`` accepted by :meth:`get`.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
        guidance_tolerance: float = DEFAULT_GUIDANCE_TOLERANCE,
    ) -> None:
        roots = [Path(root)] if isinstance(root, (str, os.PathLike)) else [Path(r) for r in root]
        if not roots:
            raise ValueError("ScheduleRegistry needs at least one folder")
        self.roots = roots
        self.guidance_tolerance = guidance_tolerance
        self._warned: set[str] = set()

    def _warn_once(self, message: str, *args: object) -> None:
        """Log ``message % args`` at WARNING, unless this registry logged it already."""
        text = message % args
        if text not in self._warned:
            self._warned.add(text)
            logger.warning("%s", text)

    @classmethod
    def default(
        cls, extra_dir: str | os.PathLike[str] | None = None, **kwargs: float
    ) -> ScheduleRegistry:
        """The writable folder ``extra_dir`` (if given), then the built-in one."""
        roots = [Path(extra_dir)] if extra_dir is not None else []
        return cls([*roots, BUILTIN_DIR], **kwargs)

    @property
    def writable_root(self) -> Path:
        """Where :meth:`put` writes: the first folder."""
        return self.roots[0]

    def put(self, schedule: Schedule) -> Path:
        """Save ``schedule`` as ``<root>/<schedule.name>.json`` and return the path."""
        return schedule.save(self.writable_root / f"{schedule.name}.json")

    def list(self) -> list[RegistryEntry]:
        """Every valid schedule file; the others are skipped with a warning naming the file.

        A file whose name an earlier folder holds too is shadowed: the earlier folder's file
        (the writable folder's, a user's) wins, with a warning naming both. Each warning is
        logged once per registry.
        """
        entries: dict[str, RegistryEntry] = {}
        for root in self.roots:
            if not root.is_dir():
                continue
            for path in sorted(root.glob("*.json")):
                if path.stem in entries:
                    self._warn_once(
                        "schedule file %s shadows %s (same name; the first folder's wins)",
                        entries[path.stem].path, path,
                    )
                    continue
                try:
                    schedule = Schedule.load(path)
                except ScheduleFileError as exc:
                    self._warn_once("skipping invalid schedule file: %s", exc)
                    continue
                except Exception as exc:  # a file from anywhere must not stop start-up
                    self._warn_once("skipping unreadable schedule file %s: %s: %s", path,
                                    type(exc).__name__, exc)
                    continue
                entries[path.stem] = RegistryEntry(
                    name=path.stem,
                    model=schedule.model_id,
                    steps=schedule.num_steps,
                    guidance=schedule.guidance_scale,
                    method=schedule.method,
                    path=path,
                    identity=schedule.model_identity or None,
                )
        return list(entries.values())

    def find(self, name: str) -> Schedule:
        """Load a schedule by entry name (file stem)."""
        for entry in self.list():
            if entry.name == name:
                return Schedule.load(entry.path)
        raise ScheduleNotFound(f"no schedule named {name!r}; available: {self._available()}")

    def get(
        self,
        model: str | os.PathLike[str],
        steps: int,
        guidance: float,
        method: Method | str | None = None,
        identity: str | None = None,
    ) -> Schedule:
        """The schedule for ``model`` with exactly ``steps`` steps and the nearest guidance.

        With ``identity`` (:mod:`schedules.model_identity`), only files fitted for that
        identity or naming no identity match (:meth:`RegistryEntry.serves`), and the first win.

        Raises :class:`ScheduleNotFound` (listing what is available) when no schedule has that
        step count or none is within ``guidance_tolerance`` of ``guidance``. With several
        matches, the nearest guidance wins, then ``"closed-loop"`` over other methods, then the
        first folder.
        """
        key = model_key(model)
        matches = [
            e
            for e in self.list()
            if e.serves(key, identity)
            and e.steps == steps
            and abs(e.guidance - guidance) <= self.guidance_tolerance
            and (method is None or e.method == method)
        ]
        if not matches:
            raise ScheduleNotFound(
                f"no OLSS schedule for model {key!r} with {steps} steps and guidance "
                f"{guidance:g} (tolerance {self.guidance_tolerance:g}"
                f"{', method ' + method if method else ''}); available: {self._available()}"
            )
        preference = list(Method)
        best = min(
            matches,
            key=lambda e: (abs(e.guidance - guidance), e.identity is None,
                           preference.index(e.method)),
        )
        return Schedule.load(best.path)

    def _available(self) -> str:
        entries = self.list()
        if not entries:
            return "none (searched " + ", ".join(str(r) for r in self.roots) + ")"
        return "; ".join(
            f"{e.model} steps={e.steps} guidance={e.guidance:g} method={e.method}" for e in entries
        )
