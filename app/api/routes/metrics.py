"""``GET /metrics``: the gateway's Prometheus metrics; queue depth and workers sampled here."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.api.deps import FleetDep, MetricsDep, QueueDep, RedisDep
from olss_core.keys import MODELS_SET

router = APIRouter(tags=["metrics"])


@router.get("/metrics", response_class=Response)
async def metrics(
    metrics: MetricsDep, redis: RedisDep, queue: QueueDep, fleet: FleetDep
) -> Response:
    """Prometheus text format."""
    models = sorted(await redis.smembers(MODELS_SET))
    metrics.queue_depth.set(await queue.depth(models))
    metrics.workers.set(len((await fleet.get(fresh=True)).workers))
    return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)
