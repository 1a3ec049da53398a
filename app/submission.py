"""The one path from a request to its result, for every protocol the gateway speaks.

``POST /generate``, the OpenAI Images API and the AUTOMATIC1111 API each turn their body into a
``GenerateRequest``; from there it is the same for all: ``app.validation.build_job_spec``,
``JobQueue.enqueue`` (with the request's webhook, idempotency and owner), the finish notice
(``FinishNotifier.wait``) and the stored result. A sync client that goes away while it waits
cancels its job, unless an ``Idempotency-Key`` lets another request wait for the same job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from enum import Enum

from fastapi import Request
from redis.asyncio import Redis

from app import jobs
from app.auth import Caller
from app.errors import JobCanceled, JobFailed, JobFinished, JobNotFound, JobTimeout
from app.fleet import FleetView
from app.notifier import FinishNotifier
from app.queue import Idempotency, JobQueue
from app.result_reads import ResultReads
from app.schemas import GenerateRequest
from app.validation import build_job_spec
from app.webhooks.targets import webhook_target
from olss_core.job_states import JobStatus
from olss_core.protocol import JobRecord, JobSpec, OutputFormat
from olss_core.settings import Settings

CLIENT_CLOSED_REQUEST = 499
"""Status recorded (never received) when a sync client left before its reply (nginx's code)."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Submitted:
    """A queued job (or the one an ``Idempotency-Key`` already made: ``existing``)."""

    job_id: str
    spec: JobSpec
    existing: bool
    idempotent: bool


class Wait(Enum):
    """How a sync wait ended."""

    FINISHED = "finished"
    TIMED_OUT = "timed_out"  # still running after OLSS_SYNC_TIMEOUT_S: the job goes on
    GONE = "gone"  # the client hung up (its job was canceled unless idempotent)


async def _watch_disconnect(request: Request, gone: asyncio.Event) -> None:
    """Sets ``gone`` when the client closes its connection (ASGI ``http.disconnect``)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
    gone.set()


@dataclass(frozen=True)
class JobService:
    """Submit, wait for and read jobs for one request."""

    settings: Settings
    redis: Redis
    reads: ResultReads
    queue: JobQueue
    fleet: FleetView
    notifier: FinishNotifier
    caller: Caller

    async def submit(self, request: Request, body: GenerateRequest, output_format: OutputFormat,
                     idempotency_key: str | None = None) -> Submitted:
        """Validate ``body`` and queue its job (422, 429, 503 as ``app.errors`` maps them)."""
        current = await self.fleet.get()
        spec = build_job_spec(body, current, self.settings, output_format)
        webhook = webhook_target(body, str(request.base_url), self.settings)
        idempotency = (
            Idempotency.of(idempotency_key, self.caller.key,
                           f"{body.model_dump_json()} {output_format}")
            if idempotency_key else None
        )
        enqueued = await self.queue.enqueue(
            spec, idempotency, self.caller.owner,
            workers=current.by_model().get(spec.model, []), webhook=webhook,
        )
        request.state.job_id = enqueued.job_id
        if self.settings.log_prompts:
            log.info("job %s prompt %r negative %r", enqueued.job_id, spec.prompt,
                     spec.negative_prompt)
        return Submitted(enqueued.job_id, spec, enqueued.existing, idempotency is not None)

    async def wait(self, request: Request, submitted: Submitted) -> Wait:
        """Wait for the job to finish, at most ``OLSS_SYNC_TIMEOUT_S``; cancel it when the
        client hangs up first (unless another request may wait for it too)."""
        job_id = submitted.job_id
        gone = asyncio.Event()
        watcher = asyncio.ensure_future(_watch_disconnect(request, gone))
        try:
            finished = await self.notifier.wait(
                job_id, lambda: jobs.is_finished(self.redis, job_id),
                self.settings.sync_timeout_s, abandoned=gone,
                known_unfinished=not submitted.existing,
            )
        finally:
            watcher.cancel()
        if finished is None:
            if not (submitted.idempotent or submitted.existing):
                with contextlib.suppress(JobFinished, JobNotFound):
                    await self.queue.cancel(job_id)
                log.info("job %s canceled: its sync client disconnected", job_id)
            return Wait.GONE
        return Wait.FINISHED if finished else Wait.TIMED_OUT

    async def wait_finished(self, request: Request, submitted: Submitted) -> bool:
        """``wait`` for a protocol without a 202 (OpenAI, A1111): True once the job finished,
        False when the client hung up, ``JobTimeout`` (504, naming the job) when it still runs.
        """
        waited = await self.wait(request, submitted)
        if waited is Wait.TIMED_OUT:
            raise JobTimeout(
                f"job {submitted.job_id} is still running after "
                f"{self.settings.sync_timeout_s:g} s; GET /jobs/{submitted.job_id} follows it"
            )
        return waited is Wait.FINISHED

    async def record(self, job_id: str) -> JobRecord:
        return await jobs.get_record(self.redis, job_id, self.caller)

    async def result(self, submitted: Submitted, read_images: bool = True
                     ) -> tuple[JobRecord, list[bytes]]:
        """A finished job's record and images (none unless ``read_images``); ``JobFailed`` or
        ``JobCanceled`` for a job that did not succeed.

        Images read here go to the client, so they are marked delivered in the same round
        trip (``app.jobs``): the caller made (or shares, by ``Idempotency-Key``) this job.
        """
        job_id = submitted.job_id
        if read_images:
            record, images = await jobs.get_result(
                self.reads, job_id, submitted.spec.num_images, self.caller,
                delivered_ttl_s=self.settings.delivered_image_ttl_s,
            )
        else:
            record, images = await self.record(job_id), []
        if record.status is JobStatus.FAILED:
            raise JobFailed(f"job {job_id} failed: {record.error}")
        if record.status is JobStatus.CANCELED:
            raise JobCanceled(f"job {job_id} was canceled")
        return record, images
