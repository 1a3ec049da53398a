"""OLSS: learned few-step diffusion schedules (Duan et al., CIKM 2023, arXiv:2305.14677).

Public API (imported lazily, PEP 562, so ``import schedules.registry`` stays torch-free)::

    from schedules import OLSSScheduler, Schedule, ScheduleRegistry, TrajectoryRecorder, search
    from schedules import CalibrationConfig, Method, calibrate
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from schedules.calibration import CalibrationConfig, calibrate
    from schedules.olss_search import search
    from schedules.registry import ScheduleNotFound, ScheduleRegistry, model_key
    from schedules.schedule_file import Method, Schedule, ScheduleFileError
    from schedules.scheduler import OLSSScheduler
    from schedules.trajectory import Trajectories, TrajectoryRecorder

_EXPORTS = {
    "OLSSScheduler": "schedules.scheduler",
    "Method": "schedules.schedule_file",
    "Schedule": "schedules.schedule_file",
    "ScheduleFileError": "schedules.schedule_file",
    "ScheduleRegistry": "schedules.registry",
    "ScheduleNotFound": "schedules.registry",
    "model_key": "schedules.registry",
    "TrajectoryRecorder": "schedules.trajectory",
    "Trajectories": "schedules.trajectory",
    "search": "schedules.olss_search",
    "calibrate": "schedules.calibration",
    "CalibrationConfig": "schedules.calibration",
}

__all__ = [
    "CalibrationConfig",
    "Method",
    "OLSSScheduler",
    "Schedule",
    "ScheduleFileError",
    "ScheduleNotFound",
    "ScheduleRegistry",
    "Trajectories",
    "TrajectoryRecorder",
    "calibrate",
    "model_key",
    "search",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'schedules' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
