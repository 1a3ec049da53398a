"""Run one planned batch: start its jobs, generate, store; a failed batch is split in halves.

Splitting goes down to single jobs, so one bad job fails alone (retried, or dead-lettered on its
last attempt) while its batch-mates run again without it. Jobs canceled during a failed run
stay canceled. Each batch's generation time and its handover to the result stage go to the batch
window (how long the next batch may wait for more jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from olss_core.metrics import JobOutcome, Stage, WorkerMetrics
from workers.batch_progress import BatchProgress, PreviewSink
from workers.batch_window import BatchWindow
from workers.batching import halves, images
from workers.engine import BatchInterrupted, Engine
from workers.fault_injection import FaultInjection
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle, Start
from workers.result_stage import ResultSink

log = logging.getLogger(__name__)


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class BatchRunner:
    """Runs batches of compatible jobs on ``engine`` and hands them to ``writer``;
    ``after_failure`` runs before a split (the worker frees cached device memory there)."""

    lifecycle: JobLifecycle
    engine: Engine
    leases: LeaseTracker
    writer: ResultSink
    metrics: WorkerMetrics
    faults: FaultInjection = field(default_factory=FaultInjection)
    after_failure: Callable[[], None] = _nothing
    window: BatchWindow | None = None
    previews: PreviewSink | None = None

    def run(self, batch: list[ClaimedJob]) -> None:
        """Start ``batch`` (jobs that must not run are released) and run what started."""
        started = []
        for outcome, job in self.lifecycle.start(batch):
            if outcome is Start.RUN:
                started.append(job)
                continue
            self.leases.release([job])
            if outcome is Start.DEAD:
                self.metrics.jobs.labels(status=JobOutcome.FAILED).inc()
        if started:
            self._generate(started)

    def _generate(self, jobs: list[ClaimedJob]) -> None:
        progress = BatchProgress(jobs, self.lifecycle, self.leases, self.metrics, self.faults,
                                 self.previews)
        specs = [job.spec for job in jobs]
        try:
            self.faults.fail_marked(specs)
            generation = self.engine.generate(specs, progress)
        except BatchInterrupted:
            return
        except Exception as error:  # a failed batch must not take the worker down
            self._failed(progress.active(), error)
            return
        if self.window is not None:
            self.window.ran(images(jobs), generation.output.durations[Stage.TOTAL])
            self.window.handed_over(len(progress.active()))
        self.writer.store(jobs, generation, progress.canceled)

    def _failed(self, jobs: list[ClaimedJob], error: Exception) -> None:
        if len(jobs) > 1:
            log.warning("batch of %d failed (%s); splitting jobs %s",
                        len(jobs), error, " ".join(job.id for job in jobs))
            self.after_failure()
            for half in halves(jobs):
                self._generate(half)
        elif jobs:
            (job,) = jobs
            log.exception("job %s failed", job.id, exc_info=error)
            status = self.lifecycle.fail(job, error)
            outcome = JobOutcome.FAILED if status.finished else JobOutcome.RETRIED
            self.metrics.jobs.labels(status=outcome).inc()
            self.leases.release(jobs)
