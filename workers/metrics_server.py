"""The worker's own Prometheus endpoint (``OLSS_WORKER_METRICS_PORT``; 0 picks a free port)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


@dataclass(frozen=True)
class MetricsServer:
    """A running ``/metrics`` HTTP server for one registry."""

    server: WSGIServer
    thread: threading.Thread

    @classmethod
    def start(cls, registry: CollectorRegistry, host: str, port: int) -> MetricsServer:
        server, thread = start_http_server(port, addr=host, registry=registry)
        return cls(server, thread)

    @property
    def port(self) -> int:
        """The bound port (the chosen one when asked for 0)."""
        return self.server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()
