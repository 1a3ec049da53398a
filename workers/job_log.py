"""One INFO line per finished job (issue 11 item 20): what ran, how long, and how it ended.

The line names the job, model, scheduler and schedule, steps, size, images, the batch it ran
in, the attempt and the outcome, with the timings when it produced images; never the prompt.
The same fields go to ``extra`` (``OLSS_LOG_FORMAT=json`` writes them as JSON fields).
"""

from __future__ import annotations

import logging
from enum import StrEnum

from olss_core.protocol import Timings
from workers.lifecycle import ClaimedJob

log = logging.getLogger("workers.jobs")


class Outcome(StrEnum):
    """How a job's run ended, as its log line says."""

    SUCCEEDED = "succeeded"
    CANCELED = "canceled"
    RETRIED = "retried"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


def job_fields(job: ClaimedJob, outcome: Outcome, batch_images: int, schedule: str | None = None,
               timings: Timings | None = None) -> dict[str, object]:
    """The log fields of ``job``'s run (no prompt, no negative prompt)."""
    spec = job.spec
    fields: dict[str, object] = {
        "job_id": job.id, "outcome": str(outcome), "model": spec.model,
        "scheduler": spec.scheduler, "schedule": schedule, "steps": spec.steps,
        "guidance_scale": spec.guidance_scale, "size": f"{spec.width}x{spec.height}",
        "images": spec.num_images, "batch_images": batch_images,
        "attempt": job.record.attempts,
    }
    if timings is not None:
        fields |= {f"{name}_s": round(getattr(timings, name), 4) for name in
                   ("queue", "inference", "encode", "denoise", "decode", "total")}
    return fields


def log_job(job: ClaimedJob, outcome: Outcome, batch_images: int, schedule: str | None = None,
            timings: Timings | None = None, reason: str | None = None) -> None:
    """Log the one INFO line of ``job``'s finished run."""
    fields = job_fields(job, outcome, batch_images, schedule, timings)
    if reason is not None:
        fields["reason"] = reason
    text = " ".join(f"{name}={value}" for name, value in fields.items()
                    if name not in ("job_id", "outcome") and value is not None)
    log.info("job %s %s: %s", job.id, outcome, text, extra=fields)
