"""Liveness and readiness probes (``GET``, and ``HEAD`` for probes that send it)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from app.api.deps import FleetDep, RedisDep, SettingsDep
from app.errors import NoWorker, error_response, error_responses
from olss_core.protocol import calibration_retry_after_s

router = APIRouter(tags=["health"])


@router.head("/healthz", include_in_schema=False)
@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is up (checks nothing else)."""
    return {"status": "ok"}


@router.head("/readyz", include_in_schema=False)
@router.get("/readyz", responses=error_responses(503))
async def readyz(redis: RedisDep, fleet: FleetDep, settings: SettingsDep) -> JSONResponse:
    """Ready when Redis answers and a ready worker's heartbeat is fresh, or, with
    ``OLSS_ACCEPT_SLEEPING_MODELS``, a model sleeps (scaled to zero: its jobs are queued).
    Else 503: ``{"status": "calibrating", "progress": ...}`` with ``Retry-After`` while the
    workers calibrate their models' schedules, ``no_worker`` otherwise."""
    await redis.ping()
    now = await fleet.get(fresh=True)
    sleeping = [info.model_key for info in now.sleeping] if settings.accept_sleeping_models else []
    if now.workers or sleeping:
        return JSONResponse({"status": "ready", "workers": len(now.workers), "sleeping": sleeping})
    calibrating = now.calibrating()
    if calibrating:
        progress = now.calibration_ahead()
        return JSONResponse(
            {"status": "calibrating", "workers": len(calibrating),
             "progress": None if progress is None else progress.model_dump()},
            status_code=503,
            headers={"Retry-After": str(calibration_retry_after_s(progress))},
        )
    return error_response(NoWorker("no worker heartbeat is fresh"))
