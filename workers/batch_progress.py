"""The step hook of one running batch: cancels seen at a step, progress for the rest.

After each denoising step it finishes the jobs whose cancel was asked for (canceled, released)
and records the step for the others; once no job is left it stops the batch.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from olss_core.metrics import JobOutcome, WorkerMetrics
from workers.fault_injection import FaultInjection
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle


@dataclass(frozen=True)
class BatchProgress:
    """A ``StepHook`` (call it with ``(step, total)``) for ``jobs``; ``canceled`` holds the ids
    of the jobs it finished as canceled."""

    jobs: list[ClaimedJob]
    lifecycle: JobLifecycle
    leases: LeaseTracker
    metrics: WorkerMetrics
    faults: FaultInjection
    canceled: set[str] = field(default_factory=set, init=False)

    def active(self) -> list[ClaimedJob]:
        """The batch's jobs not canceled so far, in batch order."""
        return [job for job in self.jobs if job.id not in self.canceled]

    def __call__(self, step: int, total: int) -> bool:
        self.faults.delay_step()
        active = self.active()
        asked = self.lifecycle.cancel_requested(active)
        for job in active:
            if job.id in asked:
                self.lifecycle.finish_canceled(job)
                self.canceled.add(job.id)
                self.leases.release([job])
                self.metrics.jobs.labels(status=JobOutcome.CANCELED).inc()
        active = self.active()
        if active:
            self.lifecycle.progress(active, step, total)
        return bool(active)
