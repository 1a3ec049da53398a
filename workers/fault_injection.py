"""Testing only: the faults and slow-down the service tests ask a worker for; off by default.

``OLSS_TEST_FAIL_PROMPT`` fails every batch holding a job whose prompt contains that text, as a
bad job would; ``OLSS_TEST_STEP_DELAY_MS`` sleeps after each denoising step, so a test can
cancel a running job or kill its worker mid-job.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from olss_core.protocol import JobSpec
from olss_core.settings import Settings


class InjectedFault(RuntimeError):
    """Raised for a batch holding a job whose prompt contains ``OLSS_TEST_FAIL_PROMPT``."""


@dataclass(frozen=True)
class FaultInjection:
    """``fail_prompt``: the marker of jobs that fail; ``step_delay_s``: the sleep per step."""

    fail_prompt: str | None = None
    step_delay_s: float = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> FaultInjection:
        return cls(settings.test_fail_prompt, settings.test_step_delay_ms / 1000)

    def fail_marked(self, specs: Iterable[JobSpec]) -> None:
        """Raise ``InjectedFault`` if a prompt of ``specs`` holds the marker."""
        marker = self.fail_prompt
        if marker and any(marker in spec.prompt for spec in specs):
            raise InjectedFault(f"prompt contains OLSS_TEST_FAIL_PROMPT={marker!r}")

    def delay_step(self) -> None:
        if self.step_delay_s:
            time.sleep(self.step_delay_s)
