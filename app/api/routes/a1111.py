"""AUTOMATIC1111's API (``/sdapi/v1``) for its clients unmodified (``webuiapi.WebUIApi``):
``POST txt2img``, ``POST interrupt`` and the read-only routes clients call before generating
(``sd-models``, ``samplers``, ``options``, ``progress``, ``scripts``).

A txt2img is ``POST /generate``'s sync path (``app.submission``), mapped by
``app.protocols.a1111``. A job still running after ``OLSS_SYNC_TIMEOUT_S`` is a 504 naming it.
A job interrupted (``POST interrupt``) answers 200 with no image, as A1111 answers an
interrupted generation. The key may come as a bearer token or, as A1111's ``--api-auth`` sends
it, as a Basic password. Errors are ``app.errors``' JSON, statuses as FastAPI's (A1111's) own.
"""

from __future__ import annotations

import contextlib
from typing import Annotated

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse, Response

from app import caller_jobs
from app.api.deps import A1111CallerDep, FleetDep, QueueDep, RedisDep, SettingsDep, job_service
from app.errors import (
    REDIS_STATUSES,
    JobCanceled,
    JobFinished,
    JobNotFound,
    error_responses,
)
from app.protocols.a1111 import (
    IGNORED_HEADER,
    NAMES,
    Options,
    ProgressResponse,
    Sampler,
    SdModel,
    Txt2ImgRequest,
    Txt2ImgResponse,
    samplers,
)
from app.protocols.mapping import named_as
from app.submission import CLIENT_CLOSED_REQUEST, JobService
from olss_core.keys import events_key
from olss_core.protocol import JobEvent, now

PREVIEW_LOOKBACK = 32
"""Events read back from the end of a job's stream to find its latest preview."""
TXT2IMG_EXAMPLE = {
    "summary": "as webuiapi sends it (most fields left out)",
    "value": {"prompt": "the number 3", "sampler_name": "OLSS", "steps": 5, "cfg_scale": 4,
              "width": 16, "height": 16, "seed": -1, "batch_size": 1, "n_iter": 1},
}

router = APIRouter(prefix="/sdapi/v1", tags=["a1111"])


async def _service(request: Request, caller: A1111CallerDep) -> JobService:
    return job_service(request, caller)


A1111ServiceDep = Annotated[JobService, Depends(_service)]


@router.post("/txt2img", operation_id="a1111_txt2img", response_model=Txt2ImgResponse,
             responses=error_responses(400, 401, 404, 413, 422, 429, 500, 503, 504))
async def txt2img(
    request: Request,
    body: Annotated[Txt2ImgRequest, Body(openapi_examples={"webuiapi": TXT2IMG_EXAMPLE})],
    service: A1111ServiceDep,
) -> Response:
    """Generate images (A1111's txt2img); fields it does not use are named in
    ``X-OLSS-Ignored-Fields``."""
    with named_as(NAMES):
        generate = body.to_generate(service.settings.a1111_preview_every)
        submitted = await service.submit(request, generate, "png")
    if not await service.wait_finished(request, submitted):
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    try:
        record, images = await service.result(submitted, read_images=body.send_images)
    except JobCanceled:
        record, images = None, []
    reply = Txt2ImgResponse.of(body, record, images)
    ignored = body.ignored()
    headers = {IGNORED_HEADER: ", ".join(ignored)} if ignored else {}
    return JSONResponse(reply.model_dump(mode="json"), headers=headers)


@router.post("/interrupt", operation_id="a1111_interrupt",
             responses=error_responses(401, *REDIS_STATUSES))
async def interrupt(caller: A1111CallerDep, fleet: FleetDep, redis: RedisDep,
                    queue: QueueDep) -> dict[str, str]:
    """Cancel the caller's running jobs (no other caller's); they stop at their next step."""
    models = list((await fleet.get()).by_model())
    for record in caller_jobs.running(await caller_jobs.unfinished_jobs(redis, models, caller)):
        with contextlib.suppress(JobFinished, JobNotFound):
            await queue.cancel(record.id)
    return {}


@router.get("/progress", operation_id="a1111_progress", response_model=ProgressResponse,
            responses=error_responses(401, *REDIS_STATUSES))
async def progress(caller: A1111CallerDep, fleet: FleetDep, redis: RedisDep
                   ) -> ProgressResponse:
    """The caller's latest running job: its step, and its latest preview as ``current_image``
    (the job's ``step`` events carry it, ``OLSS_A1111_PREVIEW_EVERY``)."""
    models = list((await fleet.get()).by_model())
    unfinished = await caller_jobs.unfinished_jobs(redis, models, caller)
    active = caller_jobs.running(unfinished)
    current = active[0] if active else None
    preview = None
    if current is not None:
        for _, fields in await redis.xrevrange(events_key(current.id), count=PREVIEW_LOOKBACK):
            event = JobEvent.from_fields(fields)
            if event.preview is not None:
                preview = event.preview.data_base64
                break
    return ProgressResponse.of(current, len(unfinished), preview, now())


@router.get("/sd-models", operation_id="a1111_sd_models", response_model=list[SdModel],
            responses=error_responses(401, *REDIS_STATUSES))
async def sd_models(_: A1111CallerDep, fleet: FleetDep) -> list[SdModel]:
    """The models served now; a ``title`` is what ``override_settings.sd_model_checkpoint``
    takes."""
    return [SdModel.of(workers[0]) for workers in (await fleet.get()).by_model().values()]


@router.get("/samplers", operation_id="a1111_samplers", response_model=list[Sampler],
            responses=error_responses(401, *REDIS_STATUSES))
async def list_samplers(_: A1111CallerDep, fleet: FleetDep) -> list[Sampler]:
    """The samplers the served models take, by A1111's names (``aliases``: ours)."""
    served = {name for worker in (await fleet.get()).workers for name in worker.schedulers}
    return samplers(served)


@router.get("/options", operation_id="a1111_options", response_model=Options,
            responses=error_responses(401, *REDIS_STATUSES))
async def options(_: A1111CallerDep, fleet: FleetDep, settings: SettingsDep) -> Options:
    """The options A1111 clients read: the model a txt2img without one gets, previews."""
    groups = (await fleet.get()).by_model()
    default = settings.model or (next(iter(groups)) if len(groups) == 1 else None)
    every = settings.a1111_preview_every
    return Options(sd_model_checkpoint=default, show_progress_every_n_steps=every,
                   live_previews_enable=every > 0)


@router.get("/scripts", operation_id="a1111_scripts", responses=error_responses(401))
async def scripts(_: A1111CallerDep) -> dict[str, list[str]]:
    """A1111's scripts: none here (``webuiapi`` asks at start-up)."""
    return {"txt2img": [], "img2img": []}
