"""The step hook of one running batch: cancels and the deadline seen at a step, progress for the
rest.

After each denoising step it finishes the jobs whose cancel was asked for (canceled, released),
fails every job once the batch runs past its deadline (``OLSS_JOB_TIMEOUT_S``,
``workers.job_deadline``; not after the last step, when only decoding is left) and records the
step for the others; once no job is left it stops the batch. The step events
of the jobs that asked for previews go through ``previews`` instead (all of them, so they stay
in order), with a picture of the job's latents (``workers.previews``) on its n-th steps but the
last.

A batch whose ``START`` is still in flight (``workers.batch_runner``) passes ``starting``: it
returns the jobs ``START`` let run. The hook takes that answer before it records its first step
(so the ``started`` events go first); a job ``START`` did not let run is ``not_started``: it is
left out from then on, as if canceled, and its image is never stored.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from olss_core.metrics import JobOutcome, WorkerMetrics
from workers.batching import images
from workers.fault_injection import FaultInjection
from workers.job_deadline import Deadline
from workers.job_log import Outcome, log_job
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle


class PreviewSink(Protocol):
    """Where previews are made and sent (``workers.previews.StepPreviews``)."""

    def send(self, jobs: Sequence[ClaimedJob], rows: Mapping[str, int], latents: Any, step: int,
             total: int) -> None:
        """Send the step events of ``jobs``, after their earlier ones; a job in ``rows`` (by
        id) with a preview of that row of ``latents``."""
        ...

    def drain(self) -> None:
        """Return once every preview started is sent."""
        ...


def preview_due(every: int, step: int, total: int) -> bool:
    """A job previewing every ``every`` steps gets one at ``step`` (never at the last)."""
    return every > 0 and step < total and step % every == 0


@dataclass(frozen=True)
class BatchProgress:
    """A ``StepHook`` (call it with ``(step, total)``) for ``jobs``; ``canceled`` holds the ids
    of the jobs it finished as canceled, ``not_started`` those ``starting`` did not let run."""

    jobs: list[ClaimedJob]
    lifecycle: JobLifecycle
    leases: LeaseTracker
    metrics: WorkerMetrics
    faults: FaultInjection
    previews: PreviewSink | None = None
    deadline: Deadline | None = None
    starting: Callable[[], list[ClaimedJob]] | None = None
    canceled: set[str] = field(default_factory=set, init=False)
    timed_out: set[str] = field(default_factory=set, init=False)
    not_started: set[str] = field(default_factory=set, init=False)
    _settled: list[bool] = field(default_factory=list, init=False)

    def active(self) -> list[ClaimedJob]:
        """The batch's jobs not canceled, timed out or left out by ``START`` so far, in batch
        order."""
        left_out = self.canceled | self.timed_out | self.not_started
        return [job for job in self.jobs if job.id not in left_out]

    def left_out(self) -> set[str]:
        """Ids of the jobs whose images are not to be stored: canceled or not started."""
        return self.canceled | self.not_started

    def settle_start(self) -> None:
        """Take ``starting``'s answer, once (raises what ``START`` raised, every call): a job
        it let run gets its record as ``START`` left it, the others are ``not_started``."""
        if self.starting is None or self._settled:
            return
        started = {job.id: job for job in self.starting()}
        self._settled.append(True)
        for index, job in enumerate(self.jobs):  # in place: rows keep their jobs' order
            if job.id in started:
                self.jobs[index] = started[job.id]
            else:
                self.not_started.add(job.id)

    def __call__(self, step: int, total: int, latents: Any = None) -> bool:
        self.settle_start()
        self.faults.delay_step()
        active = self.active()
        late = self.deadline is not None and step < total and self.deadline.passed()
        previewing = self._previewing(active, latents)
        plain = [] if late else [job for job in active if job not in previewing]
        asked = self.lifecycle.after_step(active, step, total, send=plain)
        if (asked or late) and self.previews is not None:
            self.previews.drain()  # a job's previews go before its finished event
        batch_images = images(self.jobs)
        for job in active:
            if job.id in asked:
                self.lifecycle.finish_canceled(job)
                self.canceled.add(job.id)
                self.leases.release([job])
                self.metrics.jobs.labels(status=JobOutcome.CANCELED).inc()
                log_job(job, Outcome.CANCELED, batch_images, reason=f"at step {step}/{total}")
        if late:
            self._time_out(self.active(), step, total, batch_images)
        active = self.active()
        self._preview([job for job in previewing if job in active], step, total, latents)
        if step == total and self.previews is not None:
            self.previews.drain()
        return bool(active)

    def _time_out(self, jobs: list[ClaimedJob], step: int, total: int, batch_images: int
                  ) -> None:
        """Fail ``jobs`` for running past the deadline (not retried: a run as long would
        only time out again) and free them."""
        assert self.deadline is not None
        reason = self.deadline.reason(step, total)
        for job in jobs:
            self.lifecycle.dead_letter(job, reason)
            self.timed_out.add(job.id)
            self.leases.release([job])
            self.metrics.jobs.labels(status=JobOutcome.FAILED).inc()
            log_job(job, Outcome.TIMED_OUT, batch_images, reason=reason)

    def _previewing(self, active: list[ClaimedJob], latents: Any) -> list[ClaimedJob]:
        """The jobs of ``active`` whose step events go through ``previews``."""
        if self.previews is None or latents is None:
            return []
        return [job for job in active if job.spec.preview_every > 0]

    def _preview(self, previewing: list[ClaimedJob], step: int, total: int, latents: Any
                 ) -> None:
        """Send the step events of the jobs that asked for previews."""
        if not previewing:
            return
        assert self.previews is not None
        due = {job.id for job in previewing if preview_due(job.spec.preview_every, step, total)}
        rows, row = {}, 0
        for job in self.jobs:  # a job's first image is its row in the batch's latents
            if job.id in due:
                rows[job.id] = row
            row += job.spec.num_images
        self.previews.send(previewing, rows, latents, step, total)
