"""The gateway's FastAPI app factory (``uvicorn app.main:app``). Imports no torch."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from redis.asyncio import Redis

from app.api.main import api_router
from app.errors import install_error_handlers
from app.fleet import FleetView
from app.notifier import FinishNotifier
from app.queue import JobQueue
from app.request_metrics import RequestMetricsMiddleware
from olss_core import __version__
from olss_core.metrics import GatewayMetrics
from olss_core.settings import Settings, get_settings

REDIS_CONNECT_TIMEOUT_S = 2.0


def create_app(settings: Settings | None = None) -> FastAPI:
    """A gateway for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    metrics = GatewayMetrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        redis = Redis.from_url(settings.redis_url, decode_responses=True,
                               socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)
        redis_bytes = Redis.from_url(settings.redis_url,
                                     socket_connect_timeout=REDIS_CONNECT_TIMEOUT_S)
        app.state.redis = redis
        app.state.redis_bytes = redis_bytes
        app.state.queue = JobQueue(redis, settings)
        app.state.fleet = FleetView(redis)
        app.state.notifier = FinishNotifier(redis)
        app.state.notifier.start()
        try:
            yield
        finally:
            await app.state.notifier.stop()
            await redis.aclose()
            await redis_bytes.aclose()

    app = FastAPI(
        title="olss-serve",
        version=__version__,
        description="Text-to-image with learned few-step OLSS diffusion schedules.",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    install_error_handlers(app)
    app.include_router(api_router)
    return app


app = create_app()
