"""A real HTTP server on loopback that records the webhooks it gets (a receiver under test).

It answers each POST with the next status of its ``script`` (then 200), optionally a redirect,
and keeps every request: headers, body, time. Runs on a thread of the test process.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Received:
    headers: dict[str, str]
    body: bytes
    at: float
    status: int

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    """The server's URL, what it got, and what it answers next."""

    url: str = ""
    script: list[int] = field(default_factory=list)
    redirect_to: str | None = None
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self) -> int:
        with self.lock:
            return self.script.pop(0) if self.script else 200

    def delivered(self) -> list[Received]:
        """The requests answered 2xx."""
        with self.lock:
            return [r for r in self.requests if 200 <= r.status < 300]

    def wait_for(self, count: int, timeout_s: float = 30.0, delivered: bool = True
                 ) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            got = self.delivered() if delivered else list(self.requests)
            if len(got) >= count:
                return got
            time.sleep(0.02)
        raise AssertionError(f"{len(self.requests)} webhook request(s) in {timeout_s} s, "
                             f"wanted {count}: {[r.status for r in self.requests]}")


@contextmanager
def receiver(script: list[int] | None = None, redirect_to: str | None = None
             ) -> Iterator[Receiver]:
    """A ``Receiver`` listening on 127.0.0.1 until the block ends."""
    state = Receiver(script=list(script or []), redirect_to=redirect_to)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", 0)))
            status = 307 if state.redirect_to else state.answer()
            with state.lock:
                state.requests.append(Received(
                    {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic(),
                    status,
                ))
            self.send_response(status)
            if state.redirect_to:
                self.send_header("Location", state.redirect_to)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.url = f"http://127.0.0.1:{server.server_address[1]}/hook"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
