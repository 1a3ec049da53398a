"""uvicorn's httptools protocol with a deadline for each whole request and a bound on its head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for a
connection that sends nothing, or sends its headers a byte at a time (slowloris), and its
httptools protocol bounds no request head. Here:

* a connection must deliver each request, headers and body, within ``request_timeout_s`` of its
  first byte (of the connection, for the first request), or it is closed;
* the request target plus header lines (name, ``": "``, value, CRLF) take at most
  ``max_head_bytes`` (``OLSS_MAX_HEADER_BYTES``): a longer head is answered 400 and its
  connection closed, once a complete head is over the limit or the bytes received while a head
  is incomplete pass it (so a head is never held past the limit plus one read).

httptools is llhttp (C), a fraction of h11's cost per request (docs/BENCHMARKS.md, service load).
"""

from __future__ import annotations

import asyncio
import logging

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEADER_LINE_OVERHEAD = 4
"""Bytes of a header line besides its name and value: ``": "`` and CRLF."""

HEAD_TOO_LARGE = "Request line and headers too large."

log = logging.getLogger(__name__)


class HeadTooLarge(Exception):
    """Raised in a parser callback: httptools turns it into ``HttpParserCallbackError``, which
    uvicorn answers with a 400 and a closed connection."""


def deadline_protocol(request_timeout_s: float, max_head_bytes: int) -> type[HttpToolsProtocol]:
    """An ``HttpToolsProtocol`` subclass closing connections slower than ``request_timeout_s``
    and refusing request heads over ``max_head_bytes``."""

    class DeadlineHttpToolsProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None
        _receiving = True  # a request may be on its way (from the connection's start)
        _in_head = False  # the parser is inside a request head
        _head_bytes = 0  # bytes received since that head began (whole reads)
        _head_size = 0  # its request target and header lines parsed so far

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._in_head and not self.transport.is_closing():
                self._head_bytes += len(data)
                if self._head_bytes > max_head_bytes:
                    log.debug("closing %s: request head past %d bytes", self.client,
                              max_head_bytes)
                    self.send_400_response(HEAD_TOO_LARGE)

        def on_message_begin(self) -> None:  # the first byte of a request
            super().on_message_begin()
            self._receiving = self._in_head = True
            self._head_bytes = self._head_size = 0
            self._arm()

        def on_url(self, url: bytes) -> None:
            super().on_url(url)
            self._head_size += len(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            super().on_header(name, value)
            self._head_size += len(name) + len(value) + HEADER_LINE_OVERHEAD

        def on_headers_complete(self) -> None:
            if self._head_size > max_head_bytes:
                raise HeadTooLarge(HEAD_TOO_LARGE)
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._receiving = False
            self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(request_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self._receiving and not self.transport.is_closing():
                log.debug("closing %s: no whole request within %s s", self.client,
                          request_timeout_s)
                self.transport.close()

    return DeadlineHttpToolsProtocol
