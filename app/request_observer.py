"""ASGI middleware that times and logs every HTTP request.

Each request is observed in ``olss_request_duration_seconds`` (the ``endpoint`` label is the
matched route's template, ``/jobs/{job_id}``, never the raw path) and logged in one INFO line
of logger ``olss.access``: method, route, status, duration and the job id (of the path, or the
job a ``POST /generate`` made). The line never holds a query string, a header or a prompt; with
``OLSS_LOG_FORMAT=json`` its fields are JSON fields too.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from olss_core.metrics import GatewayMetrics

UNMATCHED = "unmatched"
log = logging.getLogger("olss.access")


class RequestObserver:
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
            duration = time.perf_counter() - start
            route = getattr(scope.get("route"), "path", UNMATCHED)
            self.metrics.request_duration.labels(endpoint=route, status=str(status)).observe(
                duration
            )
            job_id = scope.get("path_params", {}).get("job_id") or scope.get(
                "state", {}).get("job_id")
            log.info(
                "%s %s %d %.1fms%s", scope["method"], route, status, duration * 1000,
                f" job={job_id}" if job_id else "",
                extra={"method": scope["method"], "route": route, "status": status,
                       "duration_ms": round(duration * 1000, 2), "job_id": job_id},
            )
