"""``GET /v1/info``: models served (from heartbeats) with their limits, schedules, version."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import FleetDep, SettingsDep, require_api_key
from app.errors import REDIS_STATUSES, error_responses
from app.negotiation import AcceptsJson
from app.schemas import InfoView, Limits, ModelView
from app.validation import ModelLimits
from olss_core import __version__
from olss_core.protocol import OUTPUT_FORMATS

router = APIRouter(prefix="/v1", tags=["info"],
                   dependencies=[Depends(require_api_key), AcceptsJson])


@router.get("/info", response_model=InfoView,
            responses=error_responses(401, 406, *REDIS_STATUSES))
async def info(settings: SettingsDep, fleet: FleetDep) -> InfoView:
    """What this deployment serves right now, and the limits a request must keep."""
    models = []
    for key, infos in (await fleet.get()).by_model().items():
        first = infos[0]
        limits = ModelLimits.of(first, settings)
        rates = [w.images_per_s for w in infos if w.images_per_s]
        models.append(ModelView(
            name=first.model, key=key, workers=len(infos), width=first.width,
            height=first.height, max_width=limits.max_width, max_height=limits.max_height,
            images_per_s=sum(rates) if rates else None, schedulers=first.schedulers,
            schedules=first.schedules, default_schedule=first.default_schedule,
        ))
    limits = Limits(
        **settings.model_dump(include=set(Limits.model_fields) - {"image_ttl_s"}),
        image_ttl_s=settings.finished_image_ttl_s,
    )
    return InfoView(
        version=__version__, models=models, limits=limits, output_formats=list(OUTPUT_FORMATS)
    )
