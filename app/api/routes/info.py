"""``GET /v1/info``: models served (from heartbeats), schedules, limits, version."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from app.api.deps import FleetDep, SettingsDep, require_api_key
from app.schemas import InfoView, Limits, ModelView
from olss_core import __version__
from olss_core.protocol import OUTPUT_FORMATS

router = APIRouter(prefix="/v1", tags=["info"], dependencies=[Depends(require_api_key)])


@router.get("/info", response_model=InfoView)
async def info(settings: SettingsDep, fleet: FleetDep) -> InfoView:
    """What this deployment serves right now."""
    models = [
        ModelView(
            name=infos[0].model, key=key, workers=len(infos), width=infos[0].width,
            height=infos[0].height, schedulers=infos[0].schedulers,
            schedules=infos[0].schedules, default_schedule=infos[0].default_schedule,
        )
        for key, infos in (await fleet.get()).by_model().items()
    ]
    limits = Limits(
        **settings.model_dump(include=set(Limits.model_fields)),
    )
    return InfoView(
        version=__version__, models=models, limits=limits, output_formats=list(OUTPUT_FORMATS)
    )
