"""What a webhook says: which job events become which webhook events, and the body sent.

The body follows the Standard Webhooks recommendation (``type``, ``timestamp``, ``data``):
``type`` is ``job.start``, ``job.output`` or ``job.completed``, ``data`` the job as
``GET /jobs/{id}`` shows it (status as of the event), with absolute links to its images once it
succeeded (signed when the deployment has API keys, ``app.signed_urls``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from pydantic import BaseModel

from app.schemas import JobView
from app.signed_urls import image_url
from olss_core.job_states import JobStatus
from olss_core.protocol import EventType, JobEvent, JobRecord, WebhookEvent
from olss_core.settings import Settings

TYPE_PREFIX = "job."


def webhook_events(event: JobEvent, start_sent: bool) -> list[WebhookEvent]:
    """The webhook events a job event stands for: the first ``started`` is ``start`` (a retry
    starts the job again, its webhook does not), a success is ``output`` then ``completed``,
    any other final state ``completed``."""
    if event.type is EventType.STARTED and not start_sent:
        return [WebhookEvent.START]
    if event.type is EventType.FINISHED:
        if event.status is JobStatus.SUCCEEDED:
            return [WebhookEvent.OUTPUT, WebhookEvent.COMPLETED]
        return [WebhookEvent.COMPLETED]
    return []


def message_id(job_id: str, event: WebhookEvent) -> str:
    """The Standard Webhooks message id: one per job and event, the same on every attempt, so
    a receiver can drop a duplicate delivery."""
    return f"msg_{job_id}_{event.value}"


class WebhookJob(JobView):
    """The job in a webhook's ``data``: as ``GET /jobs/{id}`` shows it, with absolute links to
    its images once it succeeded."""

    images: list[str]


class WebhookPayload(BaseModel):
    type: str
    timestamp: str
    data: WebhookJob


def payload(event: WebhookEvent, status: JobStatus, record: JobRecord, settings: Settings
            ) -> WebhookPayload:
    """The body for ``event`` of ``record``'s job, whose status was ``status`` then."""
    assert record.webhook is not None
    images = []
    if status is JobStatus.SUCCEEDED:
        images = [image_url(record.webhook.base_url, record.id, n, settings)
                  for n in range(record.spec.num_images)]
    view = JobView.of(record, queue_position=None).model_dump()
    job = WebhookJob(**{**view, "status": status}, images=images)
    return WebhookPayload(type=f"{TYPE_PREFIX}{event.value}",
                          timestamp=datetime.now(UTC).isoformat(), data=job)
