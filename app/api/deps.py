"""Request dependencies as ``Annotated`` aliases: settings, Redis clients, queue, fleet, auth.

All are ``async def``: FastAPI would run plain ``def`` dependencies in a thread pool, a thread
hop per dependency per request.
"""

from __future__ import annotations

import secrets
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import (
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from redis.asyncio import Redis

from app.auth import Caller
from app.errors import Unauthorized
from app.event_hub import EventHub
from app.fleet import FleetView
from app.notifier import FinishNotifier
from app.queue import JobQueue
from app.submission import JobService
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


async def _events(request: Request) -> EventHub:
    return request.app.state.events


async def _metrics(request: Request) -> GatewayMetrics:
    return request.app.state.metrics


SettingsDep = Annotated[Settings, Depends(_settings)]
RedisDep = Annotated[Redis, Depends(_redis)]
BytesRedisDep = Annotated[Redis, Depends(_redis_bytes)]
QueueDep = Annotated[JobQueue, Depends(_queue)]
FleetDep = Annotated[FleetView, Depends(_fleet)]
MetricsDep = Annotated[GatewayMetrics, Depends(_metrics)]
NotifierDep = Annotated[FinishNotifier, Depends(_notifier)]
EventsDep = Annotated[EventHub, Depends(_events)]


bearer = HTTPBearer(auto_error=False, scheme_name="bearer", description="one of OLSS_API_KEYS")
"""The OpenAPI security scheme; ``app.openapi`` drops it when no key is configured."""


basic = HTTPBasic(auto_error=False, scheme_name="basic",
                  description="any user name, one of OLSS_API_KEYS as the password (A1111 API)")
"""A1111's ``--api-auth`` scheme, which its clients (``webuiapi``) send; only its routes take it."""


def _caller(settings: Settings, token: str, how: str) -> Caller:
    if not settings.api_keys:
        return Caller()
    valid = any(
        secrets.compare_digest(token.encode(), key.encode()) for key in settings.api_keys
    )
    if not valid:
        raise Unauthorized(f"missing or wrong API key: send {how}")
    return Caller(token)


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
) -> Caller:
    """The caller when ``OLSS_API_KEYS`` is set (401 if the key is missing or wrong)."""
    token = credentials.credentials.strip() if credentials else ""
    return _caller(settings, token, "'Authorization: Bearer <key>'")


async def require_a1111_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)] = None,
    login: Annotated[HTTPBasicCredentials | None, Depends(basic)] = None,
) -> Caller:
    """``require_api_key`` that also takes the key as a Basic password (A1111's API auth)."""
    if credentials is not None:
        return await require_api_key(settings, credentials)
    token = login.password if login else ""
    return _caller(settings, token, "'Authorization: Bearer <key>' or the key as the password")


CallerDep = Annotated[Caller, Depends(require_api_key)]
A1111CallerDep = Annotated[Caller, Depends(require_a1111_key)]


def job_service(request: Request, caller: Caller) -> JobService:
    """The submit-and-wait path (``app.submission``) for ``caller``."""
    state = request.app.state
    return JobService(state.settings, state.redis, state.result_reads, state.queue,
                      state.fleet, state.notifier, caller)


async def _job_service(request: Request, caller: CallerDep) -> JobService:
    return job_service(request, caller)


JobServiceDep = Annotated[JobService, Depends(_job_service)]
