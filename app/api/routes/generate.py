"""``POST /generate``: validate, enqueue, then wait for the result (sync) or return 202 (async)."""

from __future__ import annotations

import base64
from typing import Annotated

from fastapi import APIRouter, Header
from fastapi.responses import JSONResponse, Response

from app import jobs
from app.api.deps import (
    ApiKeyDep,
    BytesRedisDep,
    FleetDep,
    NotifierDep,
    QueueDep,
    RedisDep,
    SettingsDep,
)
from app.errors import JobCanceled, JobFailed
from app.queue import idempotency_digest
from app.schemas import GenerateRequest, GenerateResult, ImageOut, JobAccepted, JobLinks
from app.validation import build_job_spec
from olss_core.job_states import JobStatus
from olss_core.protocol import OUTPUT_FORMATS, JobRecord, OutputFormat

router = APIRouter(tags=["generate"])

_FORMAT_BY_TYPE: dict[str, OutputFormat] = {v: k for k, v in OUTPUT_FORMATS.items()}


def _accepted_types(accept: str | None) -> list[str]:
    return [part.split(";")[0].strip().lower() for part in (accept or "").split(",")]


def _accept_format(accept: str | None) -> OutputFormat | None:
    """The first image format named in ``Accept``, if any."""
    for media_type in _accepted_types(accept):
        if media_type in _FORMAT_BY_TYPE:
            return _FORMAT_BY_TYPE[media_type]
    return None


def _wants_raw(accept: str | None, record: JobRecord) -> bool:
    """Raw bytes when ``Accept`` takes the job's image type and there is one image."""
    types = _accepted_types(accept)
    return record.spec.num_images == 1 and (
        record.spec.content_type in types or "image/*" in types
    )


def _wants_async(prefer: str | None) -> bool:
    tokens = (token.split("=")[0].strip().lower() for token in (prefer or "").split(","))
    return "respond-async" in tokens


def accepted(job_id: str, status: JobStatus) -> JSONResponse:
    """202 with the job id, its status and its links; the job goes on."""
    links = JobLinks.for_job(job_id)
    body = JobAccepted(id=job_id, status=status, links=links)
    return JSONResponse(
        body.model_dump(mode="json"), status_code=202,
        headers={"Location": links.self, "Preference-Applied": "respond-async"},
    )


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


@router.post(
    "/generate",
    response_model=GenerateResult,
    responses={
        200: {"content": {t: {} for t in OUTPUT_FORMATS.values()},
              "description": "JSON, or the image itself with Accept: image/png|jpeg|webp"},
        202: {"model": JobAccepted, "description": "async, or the sync wait timed out"},
    },
)
async def generate(
    body: GenerateRequest,
    settings: SettingsDep,
    redis: RedisDep,
    redis_bytes: BytesRedisDep,
    queue: QueueDep,
    fleet: FleetDep,
    notifier: NotifierDep,
    api_key: ApiKeyDep,
    accept: Annotated[str | None, Header()] = None,
    prefer: Annotated[str | None, Header(description="respond-async for 202")] = None,
    idempotency_key: Annotated[str | None, Header(max_length=255)] = None,
) -> Response:
    """Generate images. Sync by default; ``Prefer: respond-async`` returns 202 at once."""
    spec = build_job_spec(body, await fleet.get(), settings, _accept_format(accept))
    digest = idempotency_digest(idempotency_key, api_key) if idempotency_key else None
    enqueued = await queue.enqueue(spec, digest)
    job_id = enqueued.job_id
    if _wants_async(prefer) and not enqueued.existing:
        return accepted(job_id, JobStatus.QUEUED)
    if _wants_async(prefer) or not await notifier.wait(
        job_id, lambda: jobs.is_finished(redis, job_id), settings.sync_timeout_s
    ):
        return accepted(job_id, (await jobs.get_record(redis, job_id)).status)
    record, images = await jobs.get_result(redis_bytes, job_id, settings.max_num_images)
    if record.status is JobStatus.FAILED:
        raise JobFailed(f"job {job_id} failed: {record.error}")
    if record.status is JobStatus.CANCELED:
        raise JobCanceled(f"job {job_id} was canceled")
    if _wants_raw(accept, record):
        return Response(images[0], media_type=record.spec.content_type,
                        headers=_result_headers(record))
    return JSONResponse(_json_result(record, images).model_dump(mode="json"),
                        headers=_result_headers(record))
