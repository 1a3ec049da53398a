"""Every Prometheus metric of the service and every label value, declared in one place.

The gateway and each worker build their own set on a per-process ``CollectorRegistry`` and
serve it: ``GatewayMetrics`` on the gateway's ``/metrics``, ``WorkerMetrics`` on the worker's
metrics port. Label values are a small fixed set: never a job id or a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)


class Stage(StrEnum):
    """``stage`` label of ``olss_job_inference_seconds``: a batch's phases and their span."""

    ENCODE = "encode"
    DENOISE = "denoise"
    DECODE = "decode"
    TOTAL = "total"


class JobOutcome(StrEnum):
    """``status`` label of ``olss_jobs_total``: how a job left the worker."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    RETRIED = "retried"


@dataclass(frozen=True)
class GatewayMetrics:
    """Gateway side: request latency by route template, sampled queue depth and live workers."""

    registry: CollectorRegistry
    request_duration: Histogram
    queue_depth: Gauge
    workers: Gauge

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        registry = registry or CollectorRegistry()
        return cls(
            registry=registry,
            request_duration=Histogram(
                "olss_request_duration_seconds", "HTTP request duration by route template",
                ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=registry,
            ),
            queue_depth=Gauge(
                "olss_queue_depth", "Jobs queued and not yet started, all models",
                registry=registry,
            ),
            workers=Gauge(
                "olss_workers", "Workers with a fresh heartbeat", registry=registry
            ),
        )


@dataclass(frozen=True)
class WorkerMetrics:
    """Worker side: per-job latency by phase, batch sizes and finished jobs by status."""

    registry: CollectorRegistry
    queue_wait: Histogram
    inference: Histogram
    e2e: Histogram
    batch_size: Histogram
    jobs: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry or CollectorRegistry()
        metrics = cls(
            registry=registry,
            queue_wait=Histogram(
                "olss_job_queue_wait_seconds", "Enqueue to start of inference",
                buckets=LATENCY_BUCKETS, registry=registry,
            ),
            inference=Histogram(
                "olss_job_inference_seconds", "Inference time of the job's batch by stage",
                ["stage"], buckets=LATENCY_BUCKETS, registry=registry,
            ),
            e2e=Histogram(
                "olss_job_e2e_seconds", "Enqueue to result stored",
                buckets=LATENCY_BUCKETS, registry=registry,
            ),
            batch_size=Histogram(
                "olss_batch_size", "Images per inference batch",
                buckets=BATCH_BUCKETS, registry=registry,
            ),
            jobs=Counter(
                "olss_jobs_total", "Jobs finished (or sent back for a retry) by status",
                ["status"], registry=registry,
            ),
        )
        for stage in Stage:
            metrics.inference.labels(stage=stage)
        for outcome in JobOutcome:
            metrics.jobs.labels(status=outcome)
        return metrics
