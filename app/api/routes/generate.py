"""``POST /generate``: validate, enqueue, then wait for the result (sync) or return 202 (async).

What a sync reply is follows ``Accept`` (``app.negotiation``): JSON with base64 images, or, for
one image, the image itself. The choice is made before the job is queued, so a request no
reply can satisfy (``Accept: image/png`` with ``num_images: 2``, or with ``output_format:
webp``) is a 406 that costs no GPU time. A sync client that goes away while it waits cancels
its job, unless an ``Idempotency-Key`` lets another request wait for the same job.

``webhook`` (with ``webhook_events_filter``, Replicate's names) has the job's events POSTed to a
URL, sync or async (``app.webhooks``); ``preview`` puts a small picture of the latents in the
job's ``step`` events (``workers.previews``). Both take the path every protocol shares
(``app.submission``).
"""

from __future__ import annotations

import base64
from typing import Annotated, Any

from fastapi import APIRouter, Body, Header, Request
from fastapi.responses import JSONResponse, Response

from app.api.deps import JobServiceDep
from app.errors import NotAcceptable, error_responses
from app.negotiation import JSON, best_match
from app.schemas import GenerateRequest, GenerateResult, ImageOut, JobAccepted, JobLinks
from app.submission import CLIENT_CLOSED_REQUEST, Wait
from olss_core.job_states import JobStatus
from olss_core.protocol import OUTPUT_FORMATS, JobRecord, OutputFormat

router = APIRouter(tags=["generate"])

_FORMAT_BY_TYPE: dict[str, OutputFormat] = {v: k for k, v in OUTPUT_FORMATS.items()}
BINARY = {"schema": {"type": "string", "format": "binary"}}
REQUEST_EXAMPLES: dict[str, Any] = {
    "default model": {
        "summary": "the default model at its defaults",
        "value": {"prompt": "a handwritten seven"},
    },
    "two images": {
        "summary": "two images, fixed seed",
        "value": {"prompt": "a handwritten three", "seed": 42, "num_images": 2},
    },
    "step previews": {
        "summary": "a preview in every step event (GET /jobs/{id}/events)",
        "value": {"prompt": "a handwritten five", "preview": True},
    },
}


def _wants_async(prefer: str | None) -> bool:
    tokens = (token.split("=")[0].strip().lower() for token in (prefer or "").split(","))
    return "respond-async" in tokens


def negotiate(body: GenerateRequest, accept: str | None) -> tuple[str, OutputFormat]:
    """The sync reply's media type and the job's image format, or ``NotAcceptable``.

    JSON always fits; the image itself only for one image, of ``output_format`` when given.
    Ties go to JSON (``*/*``); the format is ``output_format``, else the image type ``Accept``
    likes best, else png.
    """
    formats = [body.output_format] if body.output_format else list(OUTPUT_FORMATS)
    image_types = [OUTPUT_FORMATS[f] for f in formats]
    offered = [JSON, *image_types] if body.num_images == 1 else [JSON]
    chosen = best_match(offered, accept)
    if chosen is None:
        raise _not_acceptable(body, accept, offered)
    if body.output_format:
        return chosen, body.output_format
    if chosen != JSON:
        return chosen, _FORMAT_BY_TYPE[chosen]
    return chosen, _FORMAT_BY_TYPE.get(best_match(image_types, accept) or "", "png")


def _not_acceptable(body: GenerateRequest, accept: str | None, offered: list[str]
                    ) -> NotAcceptable:
    if body.num_images > 1:
        why = f"num_images={body.num_images} is answered only as {JSON}"
    elif body.output_format:
        why = f"output_format={body.output_format} is answered as {' or '.join(offered)}"
    else:
        why = f"the answer is {' or '.join(offered)}"
    return NotAcceptable(f"Accept: {accept} takes none of it: {why}")


def accepted(job_id: str, status: JobStatus, async_applied: bool) -> JSONResponse:
    """202 with the job id, its status and its links; the job goes on.

    ``Preference-Applied`` answers a ``Prefer: respond-async`` only when one was sent.
    """
    links = JobLinks.for_job(job_id)
    body = JobAccepted(id=job_id, status=status, links=links)
    headers = {"Location": links.self}
    if async_applied:
        headers["Preference-Applied"] = "respond-async"
    return JSONResponse(body.model_dump(mode="json"), status_code=202, headers=headers)


def _result_headers(record: JobRecord) -> dict[str, str]:
    headers = {"X-Job-Id": record.id, "X-Seed": str(record.spec.seed)}
    if record.schedule:
        headers["X-Schedule"] = record.schedule
    if record.timings:
        t = record.timings
        headers["Server-Timing"] = (
            f"queue;dur={t.queue * 1000:.1f}, inference;dur={t.inference * 1000:.1f}, "
            f"total;dur={t.total * 1000:.1f}"
        )
    return headers


def _json_result(record: JobRecord, images: list[bytes]) -> GenerateResult:
    spec = record.spec
    return GenerateResult(
        id=record.id, status=record.status, model=record.model, seed=spec.seed, seeds=spec.seeds,
        scheduler=spec.scheduler, schedule=record.schedule, steps=spec.steps,
        guidance_scale=spec.guidance_scale, width=spec.width, height=spec.height,
        timings=record.timings,
        images=[
            ImageOut(index=n, seed=seed, content_type=spec.content_type,
                     data_base64=base64.b64encode(data).decode())
            for n, (seed, data) in enumerate(zip(spec.seeds, images, strict=True))
        ],
    )


def job_links(job_id: str) -> dict[str, Any]:
    """OpenAPI links from a response naming a job (``job_id`` is a runtime expression)."""
    job = {"job_id": job_id}
    return {
        "GetJob": {"operationId": "get_job", "parameters": job},
        "CancelJob": {"operationId": "cancel_job", "parameters": job},
        "JobEvents": {"operationId": "job_events", "parameters": job},
        "GetImage": {"operationId": "get_image", "parameters": {**job, "index": 0}},
    }


@router.post(
    "/generate",
    operation_id="generate",
    response_model=GenerateResult,
    responses={
        200: {"content": {JSON: {}, **{t: BINARY for t in OUTPUT_FORMATS.values()}},
              "description": "JSON, or the image itself when Accept takes it and there is one",
              "links": job_links("$response.header.X-Job-Id")},
        202: {"model": JobAccepted,
              "description": "Prefer: respond-async, or the sync wait timed out: the job goes on",
              "links": job_links("$response.body#/id")},
        **error_responses(400, 401, 404, 406, 409, 413, 422, 429, 500, 503),
    },
)
async def generate(
    request: Request,
    body: Annotated[GenerateRequest, Body(openapi_examples=REQUEST_EXAMPLES)],
    service: JobServiceDep,
    prefer: Annotated[str | None, Header(description="respond-async for 202 at once")] = None,
    idempotency_key: Annotated[
        str | None,
        Header(max_length=255, description="the same key and request return the same job"),
    ] = None,
) -> Response:
    """Generate images. Sync by default; ``Prefer: respond-async`` returns 202 at once."""
    wants_async = _wants_async(prefer)
    accept = request.headers.get("accept")
    try:
        media_type, output_format = negotiate(body, accept)
    except NotAcceptable:
        if not wants_async:  # a 202 is JSON whatever Accept says: only its format matters
            raise
        media_type, output_format = JSON, body.output_format or "png"
    submitted = await service.submit(request, body, output_format, idempotency_key)
    job_id = submitted.job_id
    if wants_async:
        status = (await service.record(job_id)).status if submitted.existing \
            else JobStatus.QUEUED
        return accepted(job_id, status, async_applied=True)
    waited = await service.wait(request, submitted)
    if waited is Wait.GONE:
        return Response(status_code=CLIENT_CLOSED_REQUEST)
    if waited is Wait.TIMED_OUT:
        return accepted(job_id, (await service.record(job_id)).status, async_applied=False)
    record, images = await service.result(submitted)
    if media_type != JSON:
        return Response(images[0], media_type=record.spec.content_type,
                        headers=_result_headers(record))
    return JSONResponse(_json_result(record, images).model_dump(mode="json"),
                        headers=_result_headers(record))
