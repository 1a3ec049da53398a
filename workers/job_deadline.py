"""A job's deadline, ``OLSS_JOB_TIMEOUT_S`` after its run started (issue 11 item 8).

The step hook (``workers.batch_progress``) checks it after every denoising step, so a job that
runs past it fails within one step of the deadline and frees the worker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

TIMEOUT_SETTING = "OLSS_JOB_TIMEOUT_S"


@dataclass(frozen=True)
class Deadline:
    """``timeout_s`` seconds from ``started`` (``clock``: monotonic seconds)."""

    timeout_s: float
    clock: Callable[[], float] = time.monotonic
    started: float = field(default=-1.0)

    def __post_init__(self) -> None:
        if self.started < 0:
            object.__setattr__(self, "started", self.clock())

    @classmethod
    def of(cls, timeout_s: float) -> Deadline | None:
        """A deadline from now, or ``None`` for a timeout of 0 (none)."""
        return cls(timeout_s) if timeout_s > 0 else None

    def passed(self) -> bool:
        return self.clock() - self.started > self.timeout_s

    def reason(self, step: int, total: int) -> str:
        """The job's error: how long it ran, the setting and where it stopped."""
        ran = self.clock() - self.started
        return (f"job timeout: ran {ran:.1f} s, past {TIMEOUT_SETTING}={self.timeout_s:g} s; "
                f"stopped after step {step} of {total}")
