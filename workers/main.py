"""The worker process: load one model, warm up, then serve its queue until SIGTERM or SIGINT.

``Worker`` wires the parts: ``BatchReceiver`` fills batches (as long as ``BatchWindow`` says more
jobs are coming), ``BatchRunner`` runs them (splitting a failed one), ``ResultWriter`` stores
results (on the ``ResultStage`` thread, overlapping the next batch), ``LeaseTracker`` keeps the
held jobs' leases fresh on each heartbeat and ``ServeLoop`` drives them. On a signal the worker
stops reading, finishes and stores the running batch and hands back the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

from olss_core import __version__
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import WorkerInfo, now
from olss_core.settings import Settings
from workers.batch_runner import BatchRunner
from workers.batch_window import BatchWindow
from workers.embedded_model import DEFAULT_MODEL, model_defaults
from workers.fault_injection import FaultInjection
from workers.heartbeat import Heartbeat
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.metrics_server import MetricsServer
from workers.receiver import BatchReceiver
from workers.redis_client import connect
from workers.result_stage import ResultSink, ResultStage
from workers.result_writer import ResultWriter
from workers.serve_loop import ServeLoop
from workers.startup import LoadedModel, free_device_memory, load_model
from workers.warm_up import warm_up

DEFAULT_GUIDANCE = 7.5

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StartupTimes:
    """Seconds from ``prepare`` to ready: loading the model and schedules, then warm-up (the
    first call at every served shape: compilation, cuDNN autotuning and CUDA graph capture)."""

    load_s: float
    warm_up_s: float

    @property
    def total_s(self) -> float:
        return self.load_s + self.warm_up_s


class Worker:
    """One worker for one model: ``prepare``, then ``run`` until ``stop``, then ``close``."""

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        self.settings = settings
        self.model = model or settings.model or DEFAULT_MODEL
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.redis = connect(settings.redis_url)
        self.metrics = WorkerMetrics.create()
        self._stopping = threading.Event()
        self.heartbeat: Heartbeat | None = None
        self.metrics_server: MetricsServer | None = None
        self.results: ResultSink | None = None
        self.startup: StartupTimes | None = None

    def prepare(self) -> WorkerInfo:
        """Load the model and schedules, warm up, wire the parts, then start metrics and the
        heartbeat (the gateway routes here from the first beat)."""
        settings = self.settings
        started = time.monotonic()
        loaded = load_model(settings, self.model)
        loaded_at = time.monotonic()
        warm_up(loaded.engine, loaded.key, loaded.engine.bank.schedules, loaded.warm_batch_sizes)
        loaded.finish_warm_up()
        startup = self.startup = StartupTimes(loaded_at - started, time.monotonic() - loaded_at)
        lifecycle = JobLifecycle(self.redis, settings, loaded.key, self.worker_id)
        lifecycle.ensure_group()
        leases = LeaseTracker(lifecycle)
        window = BatchWindow(
            settings.max_batch_size, settings.max_batch_wait_ms, settings.adaptive_batch_wait
        )
        writer = ResultWriter(lifecycle, leases, self.metrics, on_stored=window.finished)
        self.results = ResultStage(writer) if settings.overlap_results else writer
        runner = BatchRunner(
            lifecycle, loaded.engine, leases, self.results, self.metrics,
            FaultInjection.from_settings(settings), free_device_memory, window,
        )
        receiver = BatchReceiver(lifecycle, leases, settings.max_batch_size, window)
        self.loop = ServeLoop(
            receiver, runner, lifecycle, leases, settings.max_batch_size, self._stopping
        )
        self.metrics_server = MetricsServer.start(
            self.metrics.registry, settings.worker_metrics_host, settings.worker_metrics_port
        )
        info = self._info(loaded, self.metrics_server.port)
        self.heartbeat = Heartbeat(
            self.redis,
            info,
            ttl_s=settings.heartbeat_ttl_s,
            period_s=min(settings.heartbeat_ttl_s, settings.lease_ms / 1000) / 3,
            on_beat=leases.extend,
        )
        self.heartbeat.start()
        log.info("worker ready after %.1f s (load %.1f s, warm-up %.1f s at batch sizes %s): %s",
                 startup.total_s, startup.load_s, startup.warm_up_s,
                 list(loaded.warm_batch_sizes), info.model_dump_json())
        return info

    def _info(self, loaded: LoadedModel, metrics_port: int) -> WorkerInfo:
        """What the heartbeat tells the gateway about this worker."""
        bank = loaded.engine.bank
        width, height = loaded.engine.native_size
        defaults = model_defaults(self.model)
        guidance = defaults.guidance_scale or DEFAULT_GUIDANCE
        default = bank.default_schedule(guidance)
        return WorkerInfo(
            worker_id=self.worker_id,
            model=self.model,
            model_key=loaded.key,
            device=str(loaded.device),
            schedules=bank.schedules,
            default_schedule=default.name if default else None,
            default_steps=defaults.num_inference_steps or self.settings.default_sampler_steps,
            default_guidance_scale=guidance,
            schedulers=bank.names,
            width=width,
            height=height,
            max_batch_size=self.settings.max_batch_size,
            metrics_port=metrics_port,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=now(),
            version=__version__,
        )

    def stop(self) -> None:
        """Ask the loop to stop after the running batch."""
        self._stopping.set()

    def run(self) -> None:
        """Serve until ``stop`` (after ``prepare``)."""
        self.loop.run()

    def close(self) -> None:
        """Stop the result thread, the heartbeat (the gateway stops routing here) and the
        metrics server."""
        if isinstance(self.results, ResultStage):
            self.results.close()
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.redis.close()


def run_worker(settings: Settings, model: str | None = None) -> int:
    """``olss worker``: serve until SIGTERM or SIGINT; returns the exit status."""
    worker = Worker(settings, model)
    try:
        worker.prepare()  # a signal during start-up ends the process: it holds no job yet
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: worker.stop())
        worker.run()
    finally:
        worker.close()
    log.info("worker %s stopped", worker.worker_id)
    return 0
