"""The worker's own HTTP endpoint (``OLSS_WORKER_METRICS_PORT``; 0 picks a free port).

``/readyz`` answers 200 while the worker is ``ready`` and 503 otherwise (loading, calibrating,
draining, stalled), with the state as its body: what a Kubernetes readiness probe asks. Every
other path is prometheus-client's metrics page. It serves from the start of loading, so a probe
of ``/metrics`` says the process is alive, ``/readyz`` that it takes jobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app

from olss_core.protocol import WorkerState

READY_PATH = "/readyz"


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Probes and scrapes are not logged."""


def _app(registry: CollectorRegistry, state: Callable[[], WorkerState]) -> Callable[..., Any]:
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != READY_PATH:
            return metrics(environ, start_response)
        current = state()
        status = "200 OK" if current is WorkerState.READY else "503 Service Unavailable"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
        return [current.value.encode()]

    return app


@dataclass(frozen=True)
class MetricsServer:
    """A running ``/metrics`` and ``/readyz`` HTTP server for one registry."""

    server: WSGIServer
    thread: threading.Thread

    @classmethod
    def start(
        cls, registry: CollectorRegistry, host: str, port: int, state: Callable[[], WorkerState]
    ) -> MetricsServer:
        server = make_server(host, port, _app(registry, state), _ThreadingServer, _QuietHandler)
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
