"""Liveness and readiness probes."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import FleetDep, RedisDep
from app.errors import NoWorker, error_response

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (checks nothing else)."""
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(redis: RedisDep, fleet: FleetDep) -> JSONResponse:
    """Ready when Redis answers and at least one worker's heartbeat is fresh (else 503)."""
    await redis.ping()
    workers = (await fleet.get(fresh=True)).workers
    if not workers:
        return error_response(NoWorker("no worker heartbeat is fresh"))
    return JSONResponse({"status": "ready", "workers": len(workers)})
