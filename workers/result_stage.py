"""Store finished batches on a background thread, so encoding and Redis writes of batch n overlap
batch n+1 on the device.

Encoding a 512x512 PNG takes tens of milliseconds of CPU (zlib, which Pillow runs without the
GIL), and the serving loop would otherwise leave the device idle meanwhile. The stage keeps
delivery at least once: a job is acknowledged only in the script that stores its result, its entry
stays held (its lease extended by the heartbeat) until then, and the serving loop drains the stage
before it returns, so a stopping worker (SIGTERM) stores every batch it ran. A worker killed with
a batch still in the stage never acknowledged it: those jobs are delivered again.

One batch is stored at a time, in order; handing over the next waits for the previous one, so the
loop runs at most one batch ahead of the stores. An error of a store (a Redis outage) comes back
from the next ``store`` or ``drain`` call, in the serving loop, which handles it as its own.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

from workers.engine import Generation
from workers.lifecycle import ClaimedJob
from workers.result_writer import ResultWriter


class ResultSink(Protocol):
    """Where the batch runner hands a finished batch: ``ResultWriter`` or ``ResultStage``."""

    def store(
        self, batch: list[ClaimedJob], generation: Generation, canceled: Collection[str] = ()
    ) -> None: ...

    def drain(self) -> None:
        """Return once every batch handed over is stored (raise a store's error)."""
        ...


class ResultStage:
    """A ``ResultSink`` that runs ``writer.store`` on one background thread."""

    def __init__(self, writer: ResultWriter) -> None:
        self._writer = writer
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="results")
        self._pending: Future[None] | None = None

    def store(
        self, batch: list[ClaimedJob], generation: Generation, canceled: Collection[str] = ()
    ) -> None:
        """Hand ``batch`` over once the previous batch is stored."""
        self.drain()
        self._pending = self._executor.submit(
            self._writer.store, list(batch), generation, frozenset(canceled)
        )
        # Let the store thread take the GIL now, not when this thread next blocks (its next
        # Redis read): on the 2-core dev box that halved the handover, 0.3-0.4 ms to 0.15-0.24
        # (docs/BENCHMARKS.md, "Service load").
        time.sleep(0)

    def drain(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Drain, then stop the thread."""
        try:
            self.drain()
        finally:
            self._executor.shutdown(wait=True)
