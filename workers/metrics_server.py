"""The worker's own HTTP endpoint (``OLSS_WORKER_METRICS_PORT``; 0 picks a free port).

``/readyz`` answers 200 while the worker is ``ready`` and 503 otherwise (loading, calibrating,
draining, stalled), with ``{"status": <state>}`` as its body: what a Kubernetes readiness probe
asks. While it calibrates (``workers.self_calibration``) the body has the ``progress`` too and
``Retry-After`` says about when to ask again. Every other path is prometheus-client's metrics
page. It serves from the start of loading, so a probe of ``/metrics`` says the process is
alive, ``/readyz`` that it takes jobs. The port is bound before the model loads: a busy one
stops start-up at once with a message naming ``OLSS_WORKER_METRICS_PORT``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from olss_core.protocol import CalibrationProgress, WorkerState, calibration_retry_after_s
from olss_core.settings import ConfigError

READY_PATH = "/readyz"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes are not logged."""


def _app(
    registry: CollectorRegistry,
    state: Callable[[], WorkerState],
    calibration: Callable[[], CalibrationProgress | None],
) -> Callable[..., Any]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != READY_PATH:
            return metrics(environ, start_response)
        current = state()
        body: dict[str, Any] = {"status": current.value}
        headers = [("Content-Type", "application/json")]
        if current is WorkerState.CALIBRATING:
            progress = calibration()
            body["progress"] = None if progress is None else progress.model_dump()
            headers.append(("Retry-After", str(calibration_retry_after_s(progress))))
        status = "200 OK" if current is WorkerState.READY else "503 Service Unavailable"
        start_response(status, headers)
        return [json.dumps(body).encode()]

    return app


def _no_progress() -> CalibrationProgress | None:
    return None


@dataclass(frozen=True)
class MetricsServer:
    """A running ``/metrics`` and ``/readyz`` HTTP server for one registry."""

    server: WSGIServer
    thread: threading.Thread

    @classmethod
    def start(
        cls, registry: CollectorRegistry, host: str, port: int, state: Callable[[], WorkerState],
        calibration: Callable[[], CalibrationProgress | None] = _no_progress,
    ) -> MetricsServer:
        """Serve on ``host:port``; a port that cannot be bound is a ``ConfigError`` naming
        the settings."""
        try:
            server = make_server(host, port, _app(registry, state, calibration),
                                 _ThreadingServer, _QuietHandler)
        except OSError as error:
            raise ConfigError(
                f"OLSS_WORKER_METRICS_PORT / OLSS_WORKER_METRICS_HOST: cannot listen on "
                f"{host}:{port} ({error.strerror or error}); choose a free port, or 0 for any"
            ) from None
        thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
        thread.start()
        return cls(server, thread)

    @property
    def port(self) -> int:
        """The bound port (the chosen one when asked for 0)."""
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
