"""Webhook deliveries driven from Redis: at least once, retried, across gateway restarts.

``ENQUEUE`` puts an entry on the model's webhook stream (``olss:{t}:webhooks``) in the same
step that makes a job with a webhook, so no accepted webhook can be lost. Every gateway process
runs one dispatcher, and the dispatchers share each stream through the consumer group
``olss-webhooks`` the way workers share a jobs stream: an entry is held by one gateway, which
follows the job's events through the event hub (no Redis connection of its own) and POSTs each
webhook event the request's filter names (``app.webhooks.payloads``, ``app.webhooks.sender``).

Progress lives in Redis (``olss:{t}:webhook:{id}``: the last job event handled, the webhook
events of the next one already handled, the failed attempts at the current one), written after
every attempt. So a gateway that stops or dies mid-retry loses nothing: its entries stay pending
in the group; a live dispatcher keeps the leases of its entries fresh (``XCLAIM``), and once an
entry has been idle ``OLSS_WEBHOOK_LEASE_MS`` another gateway claims it (``XAUTOCLAIM``) and goes
on from the stored progress. The entry is acknowledged and deleted once the job's last event has
been handled. A gateway that dies between a POST and storing it sends that event again: the
``webhook-id`` is the same, so a receiver can drop the duplicate.

Failed attempt n waits ``OLSS_WEBHOOK_RETRY_BASE_S * 2**(n-1)`` (at most
``OLSS_WEBHOOK_RETRY_MAX_S``) before attempt n+1; after ``OLSS_WEBHOOK_MAX_ATTEMPTS`` the event
is given up. Each failure's error goes to the job record (``webhook_error``; ``webhook_failures``
counts the events given up), every attempt to ``olss_webhook_deliveries_total``. The job itself
never waits for its webhook.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field, replace

from redis.asyncio import Redis
from redis.exceptions import RedisError, ResponseError

from app.event_hub import EventHub
from app.webhooks.payloads import message_id, payload, webhook_events
from app.webhooks.sender import Attempt, WebhookSender
from app.webhooks.targets import TargetGuard
from olss_core.job_scripts import WEBHOOK_FAILED
from olss_core.job_states import JobStatus
from olss_core.keys import (
    MODELS_SET,
    STREAM_JOB_FIELD,
    WEBHOOK_GROUP,
    job_key,
    webhook_progress_key,
    webhooks_stream,
)
from olss_core.metrics import GatewayMetrics, WebhookOutcome
from olss_core.protocol import JobRecord, WebhookEvent
from olss_core.settings import Settings

POLL_S = 0.5
"""How often each model's webhook stream is read for new and abandoned entries."""
READ_COUNT = 64
STOP_TIMEOUT_S = 2.0

log = logging.getLogger(__name__)


class _Stopped(Exception):
    """The dispatcher is stopping: leave the entry pending for another gateway."""


@dataclass(frozen=True)
class Progress:
    """A job's webhook progress as stored in ``olss:{t}:webhook:{id}``."""

    cursor: str = "0"
    sent: tuple[WebhookEvent, ...] = ()
    attempts: int = 0
    start_sent: bool = False

    @classmethod
    def from_hash(cls, data: dict[str, str]) -> Progress:
        if not data:
            return cls()
        return cls(
            cursor=data["cursor"],
            sent=tuple(WebhookEvent(e) for e in data["sent"].split(",") if e),
            attempts=int(data["attempts"]),
            start_sent=data["start_sent"] == "1",
        )

    def to_hash(self) -> dict[str, str]:
        return {"cursor": self.cursor, "sent": ",".join(self.sent),
                "attempts": str(self.attempts), "start_sent": "1" if self.start_sent else "0"}


@dataclass
class _Held:
    """The entries this dispatcher holds, by model: entry id -> job id."""

    entries: dict[str, dict[str, str]] = field(default_factory=dict)

    def add(self, model: str, entry_id: str, job_id: str) -> bool:
        held = self.entries.setdefault(model, {})
        if entry_id in held:
            return False
        held[entry_id] = job_id
        return True

    def drop(self, model: str, entry_id: str) -> None:
        self.entries.get(model, {}).pop(entry_id, None)


class WebhookDispatcher:
    """The webhook deliveries of one gateway process (see the module docstring)."""

    def __init__(self, redis: Redis, events: EventHub, settings: Settings,
                 metrics: GatewayMetrics, sender: WebhookSender) -> None:
        self._redis = redis
        self._events = events
        self._settings = settings
        self._metrics = metrics
        self._sender = sender
        self.consumer = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._failed = redis.register_script(WEBHOOK_FAILED)
        self._stop = asyncio.Event()
        self._held = _Held()
        self._groups: set[str] = set()
        self._reclaim_cursors: dict[str, str] = {}
        self._deliveries: set[asyncio.Task[None]] = set()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def of(cls, redis: Redis, events: EventHub, settings: Settings, metrics: GatewayMetrics
           ) -> WebhookDispatcher | None:
        """The dispatcher for ``settings``; ``None`` without ``OLSS_WEBHOOK_SECRET``."""
        if settings.webhook_secret is None:
            return None
        sender = WebhookSender(settings.webhook_secret.get_secret_value(),
                               TargetGuard.of(settings), settings.webhook_timeout_s)
        return cls(redis, events, settings, metrics, sender)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="webhook-dispatcher")

    async def stop(self) -> None:
        """Stop taking entries and end the deliveries under way (they stay pending: another
        gateway, or this one restarted, goes on with them)."""
        self._stop.set()
        for task in self._deliveries:
            task.cancel()
        tasks = [t for t in (self._task, *self._deliveries) if t is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
        await self._sender.aclose()

    # -- taking entries -----------------------------------------------------------------

    async def _run(self) -> None:
        renewed_at = time.monotonic()
        renew_every_s = self._settings.webhook_lease_ms / 3000
        while not self._stop.is_set():
            try:
                for model in sorted(await self._redis.smembers(MODELS_SET)):
                    await self._take(model)
                if time.monotonic() - renewed_at >= renew_every_s:
                    await self._renew()
                    renewed_at = time.monotonic()
            except RedisError as error:
                log.warning("webhook streams unreadable: %s", error)
                if "NOGROUP" in str(error):  # Redis lost its data: make the groups again
                    self._groups.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), POLL_S)

    async def _take(self, model: str) -> None:
        """Start delivering the model's abandoned entries (idle past the lease) and new ones."""
        stream = webhooks_stream(model)
        if model not in self._groups:
            try:
                await self._redis.xgroup_create(stream, WEBHOOK_GROUP, id="0", mkstream=True)
            except ResponseError as error:
                if "BUSYGROUP" not in str(error):
                    raise
            self._groups.add(model)
        cursor, claimed, deleted = await self._redis.xautoclaim(
            stream, WEBHOOK_GROUP, self.consumer, self._settings.webhook_lease_ms,
            start_id=self._reclaim_cursors.get(model, "0-0"), count=READ_COUNT,
        )
        self._reclaim_cursors[model] = cursor
        if deleted:
            await self._redis.xack(stream, WEBHOOK_GROUP, *deleted)
        reply = await self._redis.xreadgroup(
            WEBHOOK_GROUP, self.consumer, {stream: ">"}, count=READ_COUNT
        )
        entries = claimed + [entry for _, batch in reply for entry in batch]
        for entry_id, fields in entries:
            job_id = fields.get(STREAM_JOB_FIELD)
            if job_id and self._held.add(model, entry_id, job_id):
                task = asyncio.create_task(self._deliver(model, entry_id, job_id),
                                           name=f"webhook-{job_id}")
                self._deliveries.add(task)
                task.add_done_callback(self._deliveries.discard)

    async def _renew(self) -> None:
        """Reset the idle time of the entries this dispatcher still owns (no other's)."""
        for model, held in self._held.entries.items():
            if not held:
                continue
            stream = webhooks_stream(model)
            pending = await self._redis.xpending_range(
                stream, WEBHOOK_GROUP, min="-", max="+", count=max(100, len(held)),
                consumername=self.consumer,
            )
            mine = sorted({entry["message_id"] for entry in pending} & set(held))
            if mine:
                await self._redis.xclaim(stream, WEBHOOK_GROUP, self.consumer, 0, mine,
                                         justid=True)

    # -- one job's webhook --------------------------------------------------------------

    async def _deliver(self, model: str, entry_id: str, job_id: str) -> None:
        try:
            await self._follow(job_id)
            stream = webhooks_stream(model)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xack(stream, WEBHOOK_GROUP, entry_id)
                pipe.xdel(stream, entry_id)
                await pipe.execute()
        except _Stopped:
            pass
        except RedisError as error:  # left pending: claimed again once its lease runs out
            log.warning("webhook of job %s paused: %s", job_id, error)
        except Exception:
            log.exception("webhook of job %s failed; left for a retry after its lease", job_id)
        finally:
            self._held.drop(model, entry_id)

    async def _follow(self, job_id: str) -> None:
        """Send the job's webhook events, from its stored progress to its last event."""
        record = await self._record(job_id)
        if record is None or record.webhook is None:
            return
        wanted = record.webhook.events
        progress = Progress.from_hash(await self._redis.hgetall(webhook_progress_key(job_id)))
        async with contextlib.aclosing(self._events.follow(job_id, progress.cursor)) as events:
            async for stored in events:
                due = webhook_events(stored.event, progress.start_sent)
                for event in due:
                    if event not in progress.sent:
                        if event in wanted:
                            status = stored.event.status or JobStatus.RUNNING
                            progress = await self._send(job_id, event, status, progress)
                        progress = replace(progress, sent=(*progress.sent, event), attempts=0)
                        await self._save(job_id, progress)
                if due:
                    progress = Progress(
                        cursor=stored.id,
                        start_sent=progress.start_sent or WebhookEvent.START in due,
                    )
                    await self._save(job_id, progress)

    async def _send(self, job_id: str, event: WebhookEvent, status: JobStatus,
                    progress: Progress) -> Progress:
        """Attempt ``event`` until delivered, refused or given up; the progress after it."""
        record = await self._record(job_id)
        if record is None or record.webhook is None:
            return progress
        body = payload(event, status, record, self._settings).model_dump_json()
        url = record.webhook.url
        settings = self._settings
        while True:
            attempt = await self._sender.send(url, message_id(job_id, event), body)
            if attempt.delivered:
                self._count(WebhookOutcome.DELIVERED)
                return progress
            progress = replace(progress, attempts=progress.attempts + 1)
            given_up = attempt.refused or progress.attempts >= settings.webhook_max_attempts
            await self._failed_attempt(job_id, event, attempt, progress.attempts, given_up)
            if given_up:
                return progress
            await self._save(job_id, progress)
            delay = min(settings.webhook_retry_max_s,
                        settings.webhook_retry_base_s * 2 ** (progress.attempts - 1))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            if self._stop.is_set():
                raise _Stopped

    async def _failed_attempt(self, job_id: str, event: WebhookEvent, attempt: Attempt,
                              attempts: int, given_up: bool) -> None:
        if attempt.refused:
            outcome = WebhookOutcome.REFUSED
        else:
            outcome = WebhookOutcome.FAILED if given_up else WebhookOutcome.RETRIED
        self._count(outcome)
        error = f"{event.value} attempt {attempts}: {attempt.error}"
        log.warning("webhook of job %s: %s%s", job_id, error, " (given up)" if given_up else "")
        await self._failed(keys=[job_key(job_id)], args=[error, "1" if given_up else "0"])

    def _count(self, outcome: WebhookOutcome) -> None:
        self._metrics.webhook_deliveries.labels(outcome=outcome).inc()

    async def _record(self, job_id: str) -> JobRecord | None:
        data = await self._redis.hgetall(job_key(job_id))
        return JobRecord.from_hash(data) if data else None

    async def _save(self, job_id: str, progress: Progress) -> None:
        key = webhook_progress_key(job_id)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=progress.to_hash())
            pipe.expire(key, self._settings.job_ttl_s)
            await pipe.execute()
