"""``GET /metrics``: the gateway's Prometheus metrics; queue depth and workers sampled here."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import FleetDep, MetricsDep, QueueDep
from app.errors import REDIS_STATUSES, error_responses

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}},
                             "description": "Prometheus text format"},
                       **error_responses(*REDIS_STATUSES)})
async def metrics(metrics: MetricsDep, queue: QueueDep, fleet: FleetDep) -> Response:
    """Prometheus text format."""
    current = await fleet.get(fresh=True)
    metrics.queue_depth.set(await queue.depth(sorted(current.known_models)))
    metrics.workers.set(len(current.workers))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
