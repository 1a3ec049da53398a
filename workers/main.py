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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import redis

from olss_core import __version__
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import CalibrationProgress, WorkerInfo, WorkerState, max_side, now
from olss_core.redis_clients import RedisTarget, sync_client
from olss_core.settings import Settings
from schedules import model_key
from workers.batch_runner import BatchRunner
from workers.batch_window import BatchWindow
from workers.device_memory import memory_used
from workers.embedded_model import DEFAULT_MODEL, model_defaults, resolve_model
from workers.fault_injection import FaultInjection
from workers.heartbeat import Heartbeat
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.metrics_server import MetricsServer
from workers.previews import StepPreviews, cached_projection
from workers.receiver import BatchReceiver
from workers.result_stage import ResultSink, ResultStage
from workers.result_writer import ResultWriter
from workers.self_calibration import SelfCalibration
from workers.serve_loop import ServeLoop
from workers.startup import DEFAULT_GUIDANCE, LoadedModel, free_device_memory, load_model
from workers.throughput import ThroughputMeter
from workers.warm_up import warm_up

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
        self.redis = sync_client(RedisTarget.of(settings))
        # The registry key, as load_model derives it: the heartbeat names it while loading.
        self.model_key = model_key(resolve_model(self.model))
        self.metrics = WorkerMetrics.create(self.model_key)
        self._stopping = threading.Event()
        self.heartbeat: Heartbeat | None = None
        self.metrics_server: MetricsServer | None = None
        self.results: ResultSink | None = None
        self.previews: StepPreviews | None = None
        self.starts: ThreadPoolExecutor | None = None
        self.throughput = ThroughputMeter()
        self.startup: StartupTimes | None = None

    def prepare(self) -> WorkerInfo:
        """Start metrics and the heartbeat (state loading), load the model and schedules, warm
        up, wire the parts, then say ready (the gateway routes here from that beat on)."""
        settings = self.settings
        started = time.monotonic()
        self.metrics_server = MetricsServer.start(
            self.metrics.registry, settings.worker_metrics_host, settings.worker_metrics_port,
            self._state, self._calibration,
        )
        self.heartbeat = Heartbeat(
            self.redis,
            self._info(self.metrics_server.port),
            ttl_s=settings.heartbeat_ttl_s,
            period_s=min(settings.heartbeat_ttl_s, settings.lease_ms / 1000) / 3,
        )
        self.metrics.follow_state(self._state)
        self.heartbeat.start()
        calibration = SelfCalibration(settings, self.redis, self.worker_id, self._calibrating)
        loaded = load_model(settings, self.model, calibration=calibration,
                            default_guidance=self._default_guidance())
        self.heartbeat.show(self.heartbeat.info.model_copy(
            update={"state": WorkerState.LOADING, "calibration": None}
        ))  # warming up
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
        writer = ResultWriter(lifecycle, leases, self.metrics, on_stored=window.finished,
                              throughput=self.throughput)
        self.results = ResultStage(writer) if settings.overlap_results else writer
        self.previews = StepPreviews(
            cached_projection(loaded.engine.inference.pipe.vae, loaded.engine.native_size[0],
                              settings.cache_dir, loaded.key),
            lifecycle.progress,
        )
        if settings.overlap_start:
            self.starts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="start")
        runner = BatchRunner(
            lifecycle, loaded.engine, leases, self.results, self.metrics,
            FaultInjection.from_settings(settings), free_device_memory, window, self.previews,
            self.starts,
        )
        receiver = BatchReceiver(lifecycle, leases, settings.max_batch_size, window)
        self.loop = ServeLoop(
            receiver, runner, lifecycle, leases, settings.max_batch_size, self._stopping,
            on_round=self._served,
        )
        self.metrics.follow_work(lambda: len(leases.held()), lambda: memory_used(loaded.device))
        self.heartbeat.on_beat = leases.extend
        info = self._info(self.metrics_server.port, loaded)
        self.heartbeat.show(info)
        log.info("worker ready after %.1f s (load %.1f s, warm-up %.1f s at batch sizes %s): %s",
                 startup.total_s, startup.load_s, startup.warm_up_s,
                 list(loaded.warm_batch_sizes), info.model_dump_json())
        return info

    def _state(self) -> WorkerState:
        """What the heartbeat says (loading until it starts)."""
        return WorkerState.LOADING if self.heartbeat is None else self.heartbeat.state

    def _calibration(self) -> CalibrationProgress | None:
        """The start-up calibration's progress while the heartbeat says calibrating."""
        return None if self.heartbeat is None else self.heartbeat.info.calibration

    def _calibrating(self, progress: CalibrationProgress) -> None:
        """Say ``calibrating`` with ``progress`` (``SelfCalibration`` calls this)."""
        if self.heartbeat is not None:
            self.heartbeat.show(self.heartbeat.info.model_copy(update={
                "state": WorkerState.CALIBRATING, "calibration": progress,
            }))

    def _default_guidance(self) -> float:
        return model_defaults(self.model).guidance_scale or DEFAULT_GUIDANCE

    def _served(self, error: redis.RedisError | None) -> None:
        """After each round of the serving loop: stalled while Redis errors last, else ready
        (a draining heartbeat stays draining), beaten at once; the measured throughput rides
        on the next beat."""
        if self.heartbeat is None or self._stopping.is_set():
            return
        info = self.heartbeat.info
        state = WorkerState.READY if error is None else WorkerState.STALLED
        queue_error = None if error is None else f"{type(error).__name__}: {error}"
        rate = self.throughput.images_per_s
        if (info.state, info.queue_error) != (state, queue_error):
            self.heartbeat.show(info.model_copy(update={
                "state": state, "queue_error": queue_error, "images_per_s": rate}))
        elif info.images_per_s != rate:
            self.heartbeat.carry(info.model_copy(update={"images_per_s": rate}))

    def _info(self, metrics_port: int, loaded: LoadedModel | None = None) -> WorkerInfo:
        """What the heartbeat tells the gateway: while the model loads (no ``loaded``) no
        schedules, samplers or size yet; once it is ``loaded``, ready with all of them."""
        defaults = model_defaults(self.model)
        guidance = self._default_guidance()
        info = WorkerInfo(
            worker_id=self.worker_id,
            state=WorkerState.LOADING,
            model=self.model,
            model_key=self.model_key,
            device=self.settings.device,
            default_steps=defaults.num_inference_steps or self.settings.default_sampler_steps,
            default_guidance_scale=guidance,
            max_batch_size=self.settings.max_batch_size,
            metrics_port=metrics_port,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=now(),
            version=__version__,
        )
        if loaded is None:
            return info
        bank = loaded.engine.bank
        width, height = loaded.engine.native_size
        default = bank.default_schedule(guidance)
        factor = self.settings.max_size_factor
        return info.model_copy(update={
            "state": WorkerState.READY, "model_key": loaded.key, "device": str(loaded.device),
            "schedules": bank.schedules, "default_schedule": default.name if default else None,
            "schedulers": bank.names, "width": width, "height": height,
            "max_width": min(max_side(width, factor), self.settings.max_width),
            "max_height": min(max_side(height, factor), self.settings.max_height),
            "model_identity": loaded.identity or None, "olss_fallback": bank.fallback,
            "olss_fallback_reason": loaded.fallback_reason,
        })

    def stop(self) -> None:
        """Ask the loop to stop after the running batch; the heartbeat says draining."""
        self._stopping.set()
        if self.heartbeat is not None:
            self.heartbeat.drain()

    def run(self) -> None:
        """Serve until ``stop`` (after ``prepare``)."""
        self.loop.run()

    def close(self) -> None:
        """Stop the result and preview threads, the heartbeat (the gateway stops routing here)
        and the metrics server."""
        if isinstance(self.results, ResultStage):
            self.results.close()
        if self.previews is not None:
            self.previews.close()
        if self.starts is not None:
            self.starts.shutdown(wait=True)
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
