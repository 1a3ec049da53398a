"""The gateway's FastAPI app factory (``uvicorn app.main:app``). Imports no torch."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from app.api.main import allowed_methods, api_router
from app.api.routes.docs import ASSETS_DIR, ASSETS_PATH
from app.body_limit import BodyLimit
from app.errors import install_error_handlers
from app.event_hub import EventHub
from app.fleet import FleetView
from app.notifier import FinishNotifier
from app.queue import JobQueue
from app.request_observer import RequestObserver
from app.result_reads import ResultReads
from app.throughput import FinishRate
from app.webhooks.dispatcher import WebhookDispatcher
from olss_core import __version__
from olss_core.metrics import GatewayMetrics
from olss_core.redis_clients import RedisTarget, async_client
from olss_core.settings import Settings, get_settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A gateway for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    metrics = GatewayMetrics.create()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.api_keys:
            log.warning("OLSS_API_KEYS is unset: the gateway serves without authentication")
        pool = (RedisTarget.of(settings), settings.redis_max_connections,
                settings.redis_pool_timeout_s)
        redis = async_client(*pool)
        redis_bytes = async_client(*pool, decode_responses=False)
        app.state.redis = redis
        app.state.redis_bytes = redis_bytes
        app.state.result_reads = ResultReads(redis_bytes)
        finishes = FinishRate()
        app.state.queue = JobQueue(redis, settings, finishes)
        app.state.fleet = FleetView(redis)
        app.state.events = EventHub(redis, settings.sse_max_streams)
        app.state.notifier = FinishNotifier(redis, finishes)
        app.state.notifier.start()
        webhooks = WebhookDispatcher.of(redis, app.state.events, settings, metrics)
        if webhooks is not None:
            webhooks.start()
        try:
            yield
        finally:
            if webhooks is not None:
                await webhooks.stop()
            await app.state.notifier.stop()
            await app.state.events.stop()
            await redis.aclose()
            await redis_bytes.aclose()

    app = FastAPI(
        title="olss-serve",
        version=__version__,
        description="Text-to-image with learned few-step OLSS diffusion schedules.",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.metrics = metrics
    app.add_middleware(BodyLimit, max_bytes=settings.max_body_bytes)
    app.add_middleware(RequestObserver, metrics=metrics)
    install_error_handlers(app, allowed_methods)
    app.include_router(api_router)
    app.mount(ASSETS_PATH, StaticFiles(directory=str(ASSETS_DIR)), name="docs-assets")
    return app


app = create_app()
