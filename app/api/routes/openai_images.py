"""The OpenAI Images API: ``POST /v1/images/generations``, ``GET /v1/models``,
``GET /v1/models/{model}``, for the ``openai`` client unmodified (``base_url`` set to this
gateway, the API key as its ``api_key``).

A generation is ``POST /generate``'s sync path (``app.submission``): validated and queued the
same way, answered once the job finished. OpenAI's API has no 202, so a job still running after
``OLSS_SYNC_TIMEOUT_S`` is a 504 naming the job (it goes on; ``GET /jobs/{id}`` follows it).
Errors are OpenAI's error object (``app.errors``).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Depends, Header, Path, Request
from fastapi.responses import Response

from app.api.deps import FleetDep, JobServiceDep, require_api_key
from app.errors import (
    REDIS_STATUSES,
    UnknownModel,
    error_responses,
)
from app.protocols.mapping import named_as
from app.protocols.openai_images import (
    NAMES,
    REQUEST_EXAMPLES,
    ImageGenerationRequest,
    ImagesResponse,
    ModelList,
    ModelObject,
)
from app.submission import CLIENT_CLOSED_REQUEST

router = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])


@router.post(
    "/images/generations",
    operation_id="openai_create_image",
    response_model=ImagesResponse,
    response_model_exclude_none=True,
    responses=error_responses(400, 401, 404, 409, 413, 429, 500, 503, 504, openai=True),
)
async def create_image(
    request: Request,
    body: Annotated[ImageGenerationRequest, Body(openapi_examples=REQUEST_EXAMPLES)],
    service: JobServiceDep,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="the same key and request return the same job"),
    ] = None,
) -> Response | ImagesResponse:
    """Generate images (OpenAI's ``images.generate``)."""
    with named_as(NAMES):
        submitted = await service.submit(request, body.to_generate(), body.format,
                                         idempotency_key)
    if not await service.wait_finished(request, submitted):
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    inline = body.response_format == "b64_json"
    record, images = await service.result(submitted, read_images=inline)
    return ImagesResponse.of(record, images, str(request.base_url), service.settings)


@router.get("/models", operation_id="openai_list_models", response_model=ModelList,
            responses=error_responses(401, *REDIS_STATUSES, openai=True))
async def list_models(fleet: FleetDep) -> ModelList:
    """The models served now (OpenAI's ``models.list``)."""
    groups = (await fleet.get()).by_model()
    return ModelList(data=[ModelObject.of(workers) for workers in groups.values()])


@router.get("/models/{model:path}", operation_id="openai_get_model", response_model=ModelObject,
            responses=error_responses(401, 404, *REDIS_STATUSES, openai=True))
async def get_model(model: Annotated[str, Path(max_length=255)], fleet: FleetDep
                    ) -> ModelObject:
    """One served model, by its key or configured name (OpenAI's ``models.retrieve``)."""
    current = await fleet.get()
    for workers in current.by_model().values():
        if workers[0].serves(model):
            return ModelObject.of(workers)
    raise UnknownModel(f"model: {model!r} is not served; served: {current.served()}")
