"""``GET /v1/info``: models served (from heartbeats) with their limits, schedules, version."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import FleetDep, SettingsDep, require_api_key
from app.errors import REDIS_STATUSES, error_responses
from app.fleet import Fleet
from app.negotiation import AcceptsJson
from app.schemas import CalibratingModelView, InfoView, Limits, ModelView
from app.validation import ModelLimits
from olss_core import __version__
from olss_core.protocol import OUTPUT_FORMATS, WorkerInfo

router = APIRouter(prefix="/v1", tags=["info"],
                   dependencies=[Depends(require_api_key), AcceptsJson])


@router.get("/info", response_model=InfoView,
            responses=error_responses(401, 406, *REDIS_STATUSES))
async def info(settings: SettingsDep, fleet: FleetDep) -> InfoView:
    """What this deployment serves right now, and the limits a request must keep."""
    models = []
    fleet_now = await fleet.get()
    for key, infos in fleet_now.by_model().items():
        first = infos[0]
        limits = ModelLimits.of(first, settings)
        rates = [w.images_per_s for w in infos if w.images_per_s]
        models.append(ModelView(
            name=first.model, key=key, workers=len(infos), width=first.width,
            height=first.height, max_width=limits.max_width, max_height=limits.max_height,
            images_per_s=sum(rates) if rates else None, schedulers=first.schedulers,
            schedules=first.schedules, default_schedule=first.default_schedule,
            olss_fallback=first.olss_fallback, olss_fallback_reason=first.olss_fallback_reason,
        ))
    calibrating = calibrating_models(fleet_now, {m.key for m in models})
    limits = Limits(
        **settings.model_dump(include=set(Limits.model_fields) - {"image_ttl_s"}),
        image_ttl_s=settings.finished_image_ttl_s,
    )
    return InfoView(
        version=__version__, models=models, calibrating=calibrating, limits=limits,
        output_formats=list(OUTPUT_FORMATS),
    )


def calibrating_models(fleet: Fleet, served: set[str]) -> list[CalibratingModelView]:
    """The models without a ready worker whose workers calibrate, by key."""
    by_key: dict[str, list[WorkerInfo]] = {}
    for worker in fleet.calibrating():
        if worker.model_key not in served:
            by_key.setdefault(worker.model_key, []).append(worker)
    views = []
    for key, workers in sorted(by_key.items()):
        progresses = [w.calibration for w in workers if w.calibration is not None]
        views.append(CalibratingModelView(
            name=workers[0].model, key=key, workers=len(workers),
            progress=max(progresses, key=lambda p: p.fraction, default=None),
        ))
    return views
