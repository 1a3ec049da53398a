"""The stream entries a worker holds, whose leases its heartbeat keeps fresh.

An entry is held from its delivery until its job ends (stored, failed, canceled, skipped or
handed back). A live worker extends the held leases on every heartbeat, so no other worker
claims a long job; after a Redis error it forgets them all and lets them expire, since its view
of what it holds may be stale: those jobs are delivered again.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Protocol

from workers.lifecycle import JobLifecycle


class StreamEntry(Protocol):
    """A ``Delivery`` or a ``ClaimedJob``: anything naming its stream entry."""

    @property
    def message_id(self) -> str: ...


class LeaseTracker:
    """Held entry ids, shared by the serving loop and the heartbeat thread."""

    def __init__(self, lifecycle: JobLifecycle) -> None:
        self._lifecycle = lifecycle
        self._held: set[str] = set()
        self._lock = threading.Lock()

    def hold(self, entries: Iterable[StreamEntry]) -> None:
        with self._lock:
            self._held.update(entry.message_id for entry in entries)

    def release(self, entries: Iterable[StreamEntry]) -> None:
        with self._lock:
            self._held.difference_update(entry.message_id for entry in entries)

    def forget_all(self) -> None:
        with self._lock:
            self._held.clear()

    def held(self) -> frozenset[str]:
        """The entry ids held now."""
        with self._lock:
            return frozenset(self._held)

    def extend(self) -> None:
        """Reset the idle time of every held entry (the heartbeat's ``on_beat``)."""
        self._lifecycle.extend_leases(sorted(self.held()))
