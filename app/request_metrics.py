"""ASGI middleware that times every HTTP request into ``olss_request_duration_seconds``.

The ``endpoint`` label is the matched route's template (``/jobs/{job_id}``), never the raw path.
"""

from __future__ import annotations

import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from olss_core.metrics import GatewayMetrics

UNMATCHED = "unmatched"


class RequestMetricsMiddleware:
    """Observes duration until the last body chunk is sent (streams: until they end)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            endpoint = getattr(route, "path", UNMATCHED)
            self.metrics.request_duration.labels(endpoint=endpoint, status=str(status)).observe(
                time.perf_counter() - start
            )
