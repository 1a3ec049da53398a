"""Request dependencies as ``Annotated`` aliases: settings, Redis clients, queue, fleet, auth.

All are ``async def``: FastAPI would run plain ``def`` dependencies in a thread pool, a thread
hop per dependency per request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Header, Request
from redis.asyncio import Redis

from app.errors import Unauthorized
from app.fleet import FleetView
from app.notifier import FinishNotifier
from app.queue import JobQueue
from olss_core.metrics import GatewayMetrics
from olss_core.settings import Settings


async def _settings(request: Request) -> Settings:
    return request.app.state.settings


async def _redis(request: Request) -> Redis:
    return request.app.state.redis


async def _redis_bytes(request: Request) -> Redis:
    return request.app.state.redis_bytes


async def _queue(request: Request) -> JobQueue:
    return request.app.state.queue


async def _fleet(request: Request) -> FleetView:
    return request.app.state.fleet


async def _notifier(request: Request) -> FinishNotifier:
    return request.app.state.notifier


async def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
BytesRedisDep = Annotated[Redis, Depends(_redis_bytes)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
FleetDep = Annotated[FleetView, Depends(_fleet)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
NotifierDep = Annotated[FinishNotifier, Depends(_notifier)]


async def require_api_key(
    settings: SettingsDep,
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
) -> str:
    """The caller's bearer key when ``OLSS_API_KEYS`` is set (401 if missing or wrong)."""
    if not settings.api_keys:
        return ""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    valid = scheme.lower() == "bearer" and any(
        secrets.compare_digest(token.encode(), key.encode()) for key in settings.api_keys
    )
    if not valid:
        raise Unauthorized("missing or wrong API key: send 'Authorization: Bearer <key>'")
    return token


ApiKeyDep = Annotated[str, Depends(require_api_key)]
