"""An ``Engine`` without a model, for unit tests of the worker's parts.

It runs the step hook like the real engine (stopping when it returns False), makes one solid
image per seed and reports fixed stage durations. A batch holding a job whose prompt contains
``fail_prompt`` raises ``BadJob``, as a job that breaks the pipeline would.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from PIL import Image

from olss_core.metrics import Stage
from olss_core.protocol import JobSpec
from workers.engine import BatchInterrupted, BatchOutput, Generation, StepHook

DURATIONS = {Stage.ENCODE: 0.01, Stage.DENOISE: 0.05, Stage.DECODE: 0.02, Stage.TOTAL: 0.09}


class BadJob(RuntimeError):
    """Raised for a batch holding a job marked bad."""


class FakeEngine:
    """Records the specs of each call in ``calls``, in order.

    ``before_step(step)`` runs before the hook at each step: a test asks for a cancel there.
    """

    native_size = (32, 32)

    def __init__(
        self,
        fail_prompt: str | None = None,
        before_step: Callable[[int], None] | None = None,
    ) -> None:
        self.fail_prompt = fail_prompt
        self.before_step = before_step
        self.calls: list[list[JobSpec]] = []

    def generate(self, specs: Sequence[JobSpec], on_step: StepHook | None = None) -> Generation:
        self.calls.append(list(specs))
        if self.fail_prompt and any(self.fail_prompt in spec.prompt for spec in specs):
            raise BadJob(f"a prompt contains {self.fail_prompt!r}")
        total = specs[0].steps
        for step in range(1, total + 1):
            if self.before_step is not None:
                self.before_step(step)
            if on_step is not None and not on_step(step, total):
                raise BatchInterrupted
        images = [
            [Image.new("RGB", (spec.width, spec.height), (seed % 256, 0, 0)) for seed in spec.seeds]
            for spec in specs
        ]
        return Generation(f"fake-{specs[0].scheduler}", BatchOutput(images, DURATIONS))

    @property
    def prompts(self) -> list[list[str]]:
        """The prompts of each call, in order."""
        return [[spec.prompt for spec in call] for call in self.calls]
