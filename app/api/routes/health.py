"""Liveness and readiness probes (``GET``, and ``HEAD`` for probes that send it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import FleetDep, RedisDep
from app.errors import NoWorker, error_response, error_responses

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (checks nothing else)."""
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", responses=error_responses(503))
async def readyz(redis: RedisDep, fleet: FleetDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker's heartbeat is fresh (else 503)."""
    await redis.ping()
    workers = (await fleet.get(fresh=True)).workers
    if not workers:
        return error_response(NoWorker("no worker heartbeat is fresh"))
    return JSONResponse({"status": "ready", "workers": len(workers)})
