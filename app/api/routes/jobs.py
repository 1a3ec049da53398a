"""``/jobs/{id}``: status, images, cancel and the Server-Sent Events stream.

Every route answers 404 for a job of another API key, as for one that does not exist.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path, Request
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app import jobs
from app.api.deps import (
    BytesRedisDep,
    CallerDep,
    EventsDep,
    QueueDep,
    RedisDep,
    SettingsDep,
    require_api_key,
)
from app.errors import REDIS_STATUSES, JobNotFound, error_responses
from app.negotiation import EVENT_STREAM, AcceptsJson, require_acceptable
from app.schemas import CancelResult, JobView
from olss_core.job_states import JobStatus
from olss_core.protocol import OUTPUT_FORMATS

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

JobId = Annotated[str, Path(max_length=64, description="job id")]
STREAM_ID_PATTERN = r"^\d{1,19}(-\d{1,19})?$"
"""A Redis stream id ``ms-seq`` (or ``ms``); 19 digits keep each part below 2^64, which Redis
takes."""
JOB_ERRORS = (401, 404, 422, *REDIS_STATUSES)
IMAGE_CONTENT = {t: {"schema": {"type": "string", "format": "binary"}}
                 for t in OUTPUT_FORMATS.values()}


@router.get("/{job_id}", operation_id="get_job", response_model=JobView,
            dependencies=[AcceptsJson], responses=error_responses(*JOB_ERRORS, 406))
async def get_job(job_id: JobId, redis: RedisDep, queue: QueueDep, caller: CallerDep) -> JobView:
    """The job's status, queue position, progress, timings and error."""
    record = await jobs.get_record(redis, job_id, caller)
    return JobView.of(record, await queue.position(record))


@router.get(
    "/{job_id}/images/{index}",
    operation_id="get_image",
    response_class=Response,
    responses={200: {"content": IMAGE_CONTENT, "description": "the image, in the job's format"},
               **error_responses(*JOB_ERRORS, 406)},
)
async def get_image(
    request: Request,
    job_id: JobId,
    index: Annotated[int, Path(ge=0)],
    redis: RedisDep,
    redis_bytes: BytesRedisDep,
    settings: SettingsDep,
    caller: CallerDep,
) -> Response:
    """One image's bytes, in the job's output format. Once fetched, it is kept only
    ``OLSS_DELIVERED_IMAGE_TTL_S`` more."""
    record = await jobs.get_record(redis, job_id, caller)
    require_acceptable([record.spec.content_type], request.headers.get("accept"))
    if index >= record.spec.num_images:
        raise JobNotFound(f"job {job_id!r} has {record.spec.num_images} image(s); no {index}")
    data = await jobs.get_image(redis_bytes, job_id, index)
    await jobs.delivered(redis, job_id, range(index, index + 1), settings.delivered_image_ttl_s)
    return Response(data, media_type=record.spec.content_type)


@router.delete("/{job_id}", operation_id="cancel_job", response_model=CancelResult,
               dependencies=[AcceptsJson],
               responses={202: {"model": CancelResult, "description": "stops at its next step"},
                          **error_responses(*JOB_ERRORS, 406, 409)})
async def cancel_job(
    job_id: JobId, redis: RedisDep, queue: QueueDep, caller: CallerDep
) -> JSONResponse:
    """Cancel: a queued job never runs (200); a running one stops at its next step (202)."""
    await jobs.get_record(redis, job_id, caller)
    status = await queue.cancel(job_id)
    if status is JobStatus.CANCELED:
        body = CancelResult(id=job_id, status=status, detail="canceled before it started")
        return JSONResponse(body.model_dump(mode="json"), status_code=200)
    body = CancelResult(id=job_id, status=status, detail="stops at the next step")
    return JSONResponse(body.model_dump(mode="json"), status_code=202)


async def _stream_slot(
    request: Request, job_id: JobId, redis: RedisDep, events: EventsDep, caller: CallerDep
) -> AsyncIterator[str]:
    """Before the stream starts: the job exists for this caller, ``Accept`` takes an event
    stream and a slot is free (else 404, 406, 429). The slot is freed when the stream ends."""
    await jobs.get_record(redis, job_id, caller)
    require_acceptable([EVENT_STREAM], request.headers.get("accept"))
    events.reserve()
    try:
        yield job_id
    finally:
        events.release()


@router.get("/{job_id}/events", operation_id="job_events",
            response_class=EventSourceResponse, responses=error_responses(*JOB_ERRORS, 406, 429))
async def job_events(
    job_id: Annotated[str, Depends(_stream_slot)],
    events: EventsDep,
    last_event_id: Annotated[
        str | None, Header(pattern=STREAM_ID_PATTERN, description="resume after this event")
    ] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: queued, started, step (i of k), finished. Replays from the start
    (or after ``Last-Event-ID``), then follows until ``finished`` or until the job expires;
    an idle stream gets a keep-alive comment every 15 s (FastAPI's ``EventSourceResponse``)."""
    async for stored in events.follow(job_id, after=last_event_id or "0"):
        yield ServerSentEvent(
            id=stored.id,
            event=stored.event.type.value,
            raw_data=stored.event.model_dump_json(exclude_none=True),
        )
