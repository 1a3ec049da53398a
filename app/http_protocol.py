"""uvicorn's h11 protocol with a deadline for each whole request, against slow clients.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but waits forever for a
connection that sends nothing, or sends its headers a byte at a time (slowloris). Here a
connection must deliver each request, headers and body, within ``request_timeout_s`` of its
first byte (of the connection, for the first request), or it is closed. h11 itself bounds the
request line plus headers (``h11_max_incomplete_event_size``, ``OLSS_MAX_HEADER_BYTES``).
"""

from __future__ import annotations

import asyncio
import logging

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

RECEIVING = (h11.IDLE, h11.SEND_BODY)
"""h11 states of a peer whose request has not fully arrived."""

log = logging.getLogger(__name__)


def deadline_protocol(request_timeout_s: float) -> type[H11Protocol]:
    """An ``H11Protocol`` subclass closing connections slower than ``request_timeout_s``."""

    class DeadlineH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self.conn.their_state is h11.IDLE:
                self._arm()
            super().data_received(data)
            if self.conn.their_state not in RECEIVING:
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(request_timeout_s, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.conn.their_state in RECEIVING and not self.transport.is_closing():
                log.debug("closing %s: no whole request within %s s", self.client,
                          request_timeout_s)
                self.transport.close()

    return DeadlineH11Protocol
