"""The engine a worker serves with: a batch's scheduler from the bank, then the pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from olss_core.protocol import JobSpec
from workers.engine import Generation, StepHook
from workers.inference import InferenceEngine
from workers.schedulers import SchedulerBank


@dataclass(frozen=True)
class ServingEngine:
    """``workers.engine.Engine`` for one loaded pipeline and the schedulers it serves."""

    inference: InferenceEngine
    bank: SchedulerBank

    @property
    def native_size(self) -> tuple[int, int]:
        return self.inference.native_size

    def finish_warm_up(self) -> None:
        """Capture no new CUDA graphs (``InferenceEngine.finish_warm_up``)."""
        self.inference.finish_warm_up()

    def generate(self, specs: Sequence[JobSpec], on_step: StepHook | None = None) -> Generation:
        """Run ``specs`` with the scheduler the first names (a batch's jobs share it); an
        unserved one raises ``UnknownSchedule``."""
        first = specs[0]
        schedule, scheduler = self.bank.get(first.scheduler, first.steps, first.guidance_scale)
        return Generation(schedule, self.inference.generate(specs, scheduler, on_step))
