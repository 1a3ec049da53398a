"""Run one planned batch: start its jobs, generate, store; a failed batch is split in halves.

A batch of first deliveries only (``ClaimedJob.first_delivery``: no start has counted an
attempt in them) sends its ``START`` on the runner's start thread and begins generating at once,
so the round trip overlaps the first denoising step; the step hook takes its answer
(``BatchProgress.settle_start``) and a job it did not let run (canceled or gone since it was
queued) is dropped then. Any other batch starts first and waits for the answer, so a job that
may be out of attempts (a redelivery) never runs. A worker that dies before its ``START``
lands leaves that attempt uncounted; the job's next delivery is a reclaim, which waits for
``START``, so a poison job runs at most once more than ``OLSS_MAX_ATTEMPTS``.

Splitting goes down to single jobs, so one bad job fails alone (retried, or dead-lettered on its
last attempt) while its batch-mates run again without it. Jobs canceled during a failed run
stay canceled. A Redis error is no job's failure: it goes up to the serve loop, which waits the
outage out while the jobs stay pending. Every job's run has one deadline,
``OLSS_JOB_TIMEOUT_S`` from its start (halves of a failed batch keep it). Each batch's
generation time and its handover to the result stage go to the batch window (how long the next
batch may wait for more jobs).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from olss_core.metrics import JobOutcome, Stage, WorkerMetrics
from olss_core.protocol import now
from workers.batch_progress import BatchProgress, PreviewSink
from workers.batch_window import BatchWindow
from workers.batching import halves, images
from workers.engine import BatchInterrupted, Engine
from workers.fault_injection import FaultInjection
from workers.job_deadline import Deadline
from workers.job_log import Outcome, log_job
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle, Start
from workers.result_stage import ResultSink

log = logging.getLogger(__name__)


def _nothing() -> None:
    pass


@dataclass(frozen=True)
class BatchRunner:
    """Runs batches of compatible jobs on ``engine`` and hands them to ``writer``;
    ``after_failure`` runs before a split (the worker frees cached device memory there);
    ``starts`` sends the ``START`` of a batch of first deliveries (``None``: every batch
    starts before it runs)."""

    lifecycle: JobLifecycle
    engine: Engine
    leases: LeaseTracker
    writer: ResultSink
    metrics: WorkerMetrics
    faults: FaultInjection = field(default_factory=FaultInjection)
    after_failure: Callable[[], None] = _nothing
    window: BatchWindow | None = None
    previews: PreviewSink | None = None
    starts: ThreadPoolExecutor | None = None

    def run(self, batch: list[ClaimedJob]) -> None:
        """Start ``batch`` (jobs that must not run are released) and run what started."""
        deadline = Deadline.of(self.lifecycle.settings.job_timeout_s)
        if self.starts is not None and all(job.first_delivery for job in batch):
            pending = self.starts.submit(self.lifecycle.start, batch, now())  # started now
            self._generate(list(batch), deadline, lambda: self._admit(pending.result(), batch))
            return
        started = self._admit(self.lifecycle.start(batch), batch)
        if started:
            self._generate(started, deadline)

    def _admit(self, decisions: Sequence[tuple[Start, ClaimedJob]], batch: list[ClaimedJob]
               ) -> list[ClaimedJob]:
        """The jobs ``START`` let run, with their records as it left them; the others are
        released (a dead-lettered one counted as failed)."""
        started = []
        for outcome, job in decisions:
            if outcome is Start.RUN:
                started.append(job)
                continue
            self.leases.release([job])
            if outcome is Start.DEAD:
                self.metrics.jobs.labels(status=JobOutcome.FAILED).inc()
                log_job(job, Outcome.FAILED, images(batch), reason="out of attempts")
        return started

    def _generate(self, jobs: list[ClaimedJob], deadline: Deadline | None,
                  starting: Callable[[], list[ClaimedJob]] | None = None) -> None:
        progress = BatchProgress(jobs, self.lifecycle, self.leases, self.metrics, self.faults,
                                 self.previews, deadline, starting)
        specs = [job.spec for job in jobs]
        try:
            self.faults.fail_marked(specs)
            generation = self.engine.generate(specs, progress)
        except BatchInterrupted:
            return
        except redis.RedisError:
            raise  # an outage, not a failed job: the serve loop waits it out (jobs stay pending)
        except Exception as error:  # a failed batch must not take the worker down
            progress.settle_start()
            self._failed(progress.active(), error, deadline)
            return
        progress.settle_start()  # an engine that never called the hook
        if self.window is not None:
            self.window.ran(images(jobs), generation.output.durations[Stage.TOTAL])
            self.window.handed_over(len(progress.active()))
        self.writer.store(progress.jobs, generation, progress.left_out())

    def _failed(self, jobs: list[ClaimedJob], error: Exception, deadline: Deadline | None
                ) -> None:
        if len(jobs) > 1:
            log.warning("batch of %d failed (%s); splitting jobs %s",
                        len(jobs), error, " ".join(job.id for job in jobs))
            self.after_failure()
            for half in halves(jobs):
                self._generate(half, deadline)
        elif jobs:
            (job,) = jobs
            log.error("job %s failed on attempt %d", job.id, job.record.attempts, exc_info=error)
            status = self.lifecycle.fail(job, error)
            finished = status.finished
            self.metrics.jobs.labels(
                status=JobOutcome.FAILED if finished else JobOutcome.RETRIED).inc()
            self.leases.release(jobs)
            log_job(job, Outcome.FAILED if finished else Outcome.RETRIED, images(jobs),
                    reason=f"{type(error).__name__}: {error}")
