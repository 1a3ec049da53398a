"""``/jobs/{id}``: status, images, cancel and the Server-Sent Events stream."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Path
from fastapi.responses import JSONResponse, Response
from fastapi.sse import EventSourceResponse, ServerSentEvent

from app import jobs
from app.api.deps import BytesRedisDep, QueueDep, RedisDep, SettingsDep, require_api_key
from app.errors import JobNotFound
from app.schemas import CancelResult, JobLinks, JobView, Progress
from olss_core.job_states import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"], dependencies=[Depends(require_api_key)])

JobId = Annotated[str, Path(max_length=64, description="job id")]


@router.get("/{job_id}", response_model=JobView)
async def get_job(job_id: JobId, redis: RedisDep, queue: QueueDep) -> JobView:
    """The job's status, queue position, progress, timings and error."""
    record = await jobs.get_record(redis, job_id)
    images = record.spec.num_images if record.status is JobStatus.SUCCEEDED else 0
    return JobView(
        id=record.id, status=record.status, model=record.model,
        queue_position=await queue.position(record),
        progress=Progress(step=record.step, total=record.total_steps),
        attempts=record.attempts, seed=record.spec.seed, seeds=record.spec.seeds,
        scheduler=record.spec.scheduler, schedule=record.schedule,
        created_at=record.created_at, started_at=record.started_at,
        finished_at=record.finished_at, timings=record.timings,
        error=record.error, error_type=record.error_type,
        links=JobLinks.for_job(record.id, images),
    )


@router.get(
    "/{job_id}/images/{index}",
    response_class=Response,
    responses={200: {"content": {"image/png": {}, "image/jpeg": {}, "image/webp": {}}}},
)
async def get_image(
    job_id: JobId, index: Annotated[int, Path(ge=0)], redis: RedisDep, redis_bytes: BytesRedisDep
) -> Response:
    """One image's bytes, in the job's output format."""
    record = await jobs.get_record(redis, job_id)
    if index >= record.spec.num_images:
        raise JobNotFound(f"job {job_id!r} has {record.spec.num_images} image(s); no {index}")
    data = await jobs.get_image(redis_bytes, job_id, index)
    return Response(data, media_type=record.spec.content_type)


@router.delete("/{job_id}", response_model=CancelResult, responses={202: {"model": CancelResult}})
async def cancel_job(job_id: JobId, queue: QueueDep) -> JSONResponse:
    """Cancel: a queued job never runs (200); a running one stops at its next step (202)."""
    status = await queue.cancel(job_id)
    if status is JobStatus.CANCELED:
        body = CancelResult(id=job_id, status=status, detail="canceled before it started")
        return JSONResponse(body.model_dump(mode="json"), status_code=200)
    body = CancelResult(id=job_id, status=status, detail="stops at the next step")
    return JSONResponse(body.model_dump(mode="json"), status_code=202)


async def _existing_job(job_id: JobId, redis: RedisDep) -> str:
    """The job id, or 404 before any stream starts."""
    await jobs.get_record(redis, job_id)
    return job_id


@router.get("/{job_id}/events", response_class=EventSourceResponse)
async def job_events(
    job_id: Annotated[str, Depends(_existing_job)],
    redis: RedisDep,
    settings: SettingsDep,
    last_event_id: Annotated[str | None, Header(pattern=r"^\d+-\d+$")] = None,
) -> AsyncIterator[ServerSentEvent]:
    """Server-Sent Events: queued, started, step (i of k), finished. Replays from the start
    (or after ``Last-Event-ID``), then follows until ``finished``; idle streams get keep-alive
    comments (FastAPI's ``EventSourceResponse``)."""
    events = jobs.follow_events(
        redis, job_id, after=last_event_id or "0", timeout_s=settings.job_ttl_s
    )
    async for stored in events:
        yield ServerSentEvent(
            id=stored.id,
            event=stored.event.type.value,
            raw_data=stored.event.model_dump_json(exclude_none=True),
        )
