"""Helpers for unit tests of the worker's parts: take queued jobs, read the job counters."""

from __future__ import annotations

from olss_core.metrics import WorkerMetrics
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle


def receive_all(lifecycle: JobLifecycle, leases: LeaseTracker) -> list[ClaimedJob]:
    """Every new entry, held and loaded (what the receiver does, without waiting)."""
    deliveries = lifecycle.read_new(100, block_ms=None)
    leases.hold(deliveries)
    return lifecycle.load(deliveries)


def jobs_counted(metrics: WorkerMetrics) -> dict[str, float]:
    """``olss_jobs_total`` by status, the statuses that moved only."""
    counts = {}
    for family in metrics.registry.collect():
        for sample in family.samples:
            if sample.name == "olss_jobs_total" and sample.value:
                counts[sample.labels["status"]] = sample.value
    return counts
