"""``GET /metrics``: the gateway's Prometheus metrics; each model's queue and workers are sampled
here, at each scrape, from Redis and the heartbeats."""

from __future__ import annotations

from collections import Counter

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import FleetDep, MetricsDep, QueueDep
from app.errors import REDIS_STATUSES, error_responses
from app.fleet import Fleet
from app.queue import Backlog
from olss_core.metrics import GatewayMetrics
from olss_core.protocol import WorkerState

router = APIRouter(tags=["metrics"])


def sample(metrics: GatewayMetrics, fleet: Fleet, backlog: dict[str, Backlog]) -> None:
    """Set the per-model gauges to this moment's values; a model no longer seen loses its
    series (the gauges are cleared and set with no await in between: no scrape sees a gap)."""
    for gauge in (metrics.queue_depth, metrics.queue_lag, metrics.workers, metrics.fleet_workers):
        gauge.clear()
    for model, waiting in backlog.items():
        metrics.queue_depth.labels(model=model).set(waiting.depth)
        if waiting.lag is not None:
            metrics.queue_lag.labels(model=model).set(waiting.lag)
        metrics.workers.labels(model=model).set(0)
        for state in WorkerState:
            metrics.fleet_workers.labels(model=model, state=state).set(0)
    ready = Counter(info.model_key for info in fleet.workers)
    for model, count in ready.items():
        metrics.workers.labels(model=model).set(count)
    alive = Counter((info.model_key, info.state) for info in fleet.workers + fleet.unready)
    for (model, state), count in alive.items():
        metrics.fleet_workers.labels(model=model, state=state).set(count)


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"},
                       **error_responses(*REDIS_STATUSES)})
async def metrics(metrics: MetricsDep, queue: QueueDep, fleet: FleetDep) -> Response:
    """Prometheus text format."""
    current = await fleet.get(fresh=True)
    models = current.known_models | {w.model_key for w in current.workers + current.unready}
    sample(metrics, current, await queue.backlog(sorted(models)))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
