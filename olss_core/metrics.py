"""Every Prometheus metric of the service and every label value, declared in one place.

The gateway and each worker build their own set on a per-process ``CollectorRegistry`` and
serve it: ``GatewayMetrics`` on the gateway's ``/metrics``, ``WorkerMetrics`` on the worker's
metrics port. Label values are a small fixed set: never a job id or a prompt. ``model`` is a
model key (``olss_core.keys``): one per served model, a bounded set. A worker serves one model,
so its ``WorkerMetrics`` carry that model's label already bound (``inference.labels(stage=...)``
and ``jobs.labels(status=...)`` name only the rest).

prometheus-client's ``*_created`` series (a timestamp per series) are not exported: nothing
reads them and they double the series count of a fleet.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    disable_created_metrics,
)

from olss_core import __version__
from olss_core.protocol import WorkerState

disable_created_metrics()

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


class WebhookOutcome(StrEnum):
    """``outcome`` label of ``olss_webhook_deliveries_total``: how one attempt at a webhook
    event ended (``app.webhooks``)."""

    DELIVERED = "delivered"
    RETRIED = "retried"  # failed; another attempt follows after a backoff
    FAILED = "failed"  # failed on the last attempt: the event is given up
    REFUSED = "refused"  # the target is not allowed (a private address): never sent


def _build_info(registry: CollectorRegistry) -> None:
    """``olss_build_info{version}`` 1: which release each process runs."""
    Info("olss_build", "The olss-serve release of this process", registry=registry).info(
        {"version": __version__}
    )


@dataclass(frozen=True)
class GatewayMetrics:
    """Gateway side: request latency by route template; sampled per model at each scrape:
    queue depth and lag, ready workers and every live worker by state; webhook attempts by
    outcome."""

    registry: CollectorRegistry
    request_duration: Histogram
    queue_depth: Gauge
    queue_lag: Gauge
    workers: Gauge
    fleet_workers: Gauge
    webhook_deliveries: Counter

    @classmethod
    def create(cls, registry: CollectorRegistry | None = None) -> GatewayMetrics:
        registry = registry or CollectorRegistry()
        metrics = cls(
            registry=registry,
            request_duration=Histogram(
                "olss_request_duration_seconds", "HTTP request duration by route template",
                ["endpoint", "status"], buckets=LATENCY_BUCKETS, registry=registry,
            ),
            queue_depth=Gauge(
                "olss_queue_depth", "Jobs queued and not yet started, by model",
                ["model"], registry=registry,
            ),
            queue_lag=Gauge(
                "olss_queue_lag", "Stream entries no worker has read yet (the consumer "
                "group's lag, what KEDA scales on), by model", ["model"], registry=registry,
            ),
            workers=Gauge(
                "olss_workers", "Ready workers (fresh heartbeat, state ready) by model",
                ["model"], registry=registry,
            ),
            fleet_workers=Gauge(
                "olss_fleet_workers", "Workers with a fresh heartbeat by model and state",
                ["model", "state"], registry=registry,
            ),
            webhook_deliveries=Counter(
                "olss_webhook_deliveries_total", "Webhook delivery attempts by outcome",
                ["outcome"], registry=registry,
            ),
        )
        for outcome in WebhookOutcome:
            metrics.webhook_deliveries.labels(outcome=outcome)
        _build_info(registry)
        return metrics


@dataclass(frozen=True)
class _ForModel:
    """A labelled metric with its ``model`` label bound: ``labels(...)`` takes the others."""

    metric: Any
    model: str

    def labels(self, **labels: str) -> Any:
        return self.metric.labels(model=self.model, **labels)


@dataclass(frozen=True)
class WorkerMetrics:
    """Worker side, for its one ``model``: per-job latency by phase, batch sizes, finished jobs
    by status, images made, jobs held, the worker's state and its device memory."""

    registry: CollectorRegistry
    model: str
    queue_wait: Any
    inference: _ForModel
    e2e: Any
    batch_size: Any
    jobs: _ForModel
    images: Any
    in_flight: Any
    state: _ForModel
    device_memory: Any

    @classmethod
    def create(cls, model: str, registry: CollectorRegistry | None = None) -> WorkerMetrics:
        registry = registry or CollectorRegistry()

        def histogram(name: str, doc: str, labels: tuple[str, ...] = (),
                      buckets: tuple[float, ...] = LATENCY_BUCKETS) -> Histogram:
            return Histogram(name, doc, ["model", *labels], buckets=buckets, registry=registry)

        metrics = cls(
            registry=registry,
            model=model,
            queue_wait=histogram(
                "olss_job_queue_wait_seconds", "Enqueue to start of inference"
            ).labels(model=model),
            inference=_ForModel(histogram(
                "olss_job_inference_seconds", "Inference time of the job's batch by stage",
                ("stage",),
            ), model),
            e2e=histogram("olss_job_e2e_seconds", "Enqueue to result stored").labels(model=model),
            batch_size=histogram(
                "olss_batch_size", "Images per inference batch", buckets=BATCH_BUCKETS
            ).labels(model=model),
            jobs=_ForModel(Counter(
                "olss_jobs_total", "Jobs finished (or sent back for a retry) by status",
                ["model", "status"], registry=registry,
            ), model),
            images=Counter(
                "olss_images_total", "Images made and stored", ["model"], registry=registry,
            ).labels(model=model),
            in_flight=Gauge(
                "olss_jobs_in_flight", "Jobs this worker holds: received and not yet finished",
                ["model"], registry=registry,
            ).labels(model=model),
            state=_ForModel(Gauge(
                "olss_worker_state", "1 for the worker's state (its heartbeat's), 0 for the "
                "others", ["model", "state"], registry=registry,
            ), model),
            device_memory=Gauge(
                "olss_device_memory_used_bytes", "Device memory the worker's tensors hold "
                "(torch.cuda.memory_allocated; 0 on a CPU)", ["model"], registry=registry,
            ).labels(model=model),
        )
        for stage in Stage:
            metrics.inference.labels(stage=stage)
        for outcome in JobOutcome:
            metrics.jobs.labels(status=outcome)
        _build_info(registry)
        return metrics

    def follow_state(self, state: Callable[[], WorkerState]) -> None:
        """Read the worker's state from ``state`` at each scrape."""
        for each in WorkerState:
            self.state.labels(state=each).set_function(lambda each=each: float(state() is each))

    def follow_work(self, held: Callable[[], int], device_memory: Callable[[], float]) -> None:
        """Read the jobs held and the device memory used from these at each scrape."""
        self.in_flight.set_function(held)
        self.device_memory.set_function(device_memory)
