"""The worker process: load one pipeline, preload its schedules, then serve its model's queue.

Loop: claim entries (expired leases first, then new ones, waiting up to
``OLSS_MAX_BATCH_WAIT_MS`` to fill a batch), group compatible jobs, run each batch, store the
results and acknowledge. A batch that raises is split in halves down to single jobs, so one bad
job fails alone. SIGTERM/SIGINT: stop reading, finish the running batch, hand back the rest.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Iterable

import redis
import torch

from olss_core import __version__
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobSpec, Timings, WorkerInfo, now
from olss_core.settings import Settings
from schedules import ScheduleRegistry, model_key
from workers.batching import halves, images, plan_batches
from workers.embedded_model import DEFAULT_MODEL, model_defaults, resolve_model
from workers.fast_path import FastPathOptions, load_pipeline, pick_device
from workers.heartbeat import Heartbeat
from workers.inference import BatchInterrupted, BatchOutput, InferenceEngine, StepHook
from workers.lifecycle import ClaimedJob, Delivery, JobLifecycle, JobResult, Start
from workers.metrics_server import MetricsServer
from workers.results import ImageParameters, encode_image
from workers.schedulers import SchedulerBank, load_model_schedules

DEFAULT_GUIDANCE = 7.5
READ_BLOCK_MS = 1000
BATCH_POLL_S = 0.002
REDIS_RETRY_S = 1.0
WARM_UP_SCHEDULER = ("ddim", 2, 7.5)

log = logging.getLogger(__name__)


class InjectedFault(RuntimeError):
    """Raised for jobs matching ``OLSS_TEST_FAIL_PROMPT`` (testing only)."""


class Worker:
    """One worker: a pipeline, its schedulers and the lifecycle of its model's jobs."""

    def __init__(self, settings: Settings, model: str | None = None) -> None:
        self.settings = settings
        self.model = model or settings.model or DEFAULT_MODEL
        self.worker_id = settings.worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.redis = redis.Redis.from_url(settings.redis_url, decode_responses=True)
        self.metrics = WorkerMetrics.create()
        self._stopping = threading.Event()
        self._held: set[str] = set()
        self._held_lock = threading.Lock()
        self.heartbeat: Heartbeat | None = None
        self.metrics_server: MetricsServer | None = None

    # -- start-up ---------------------------------------------------------------------------

    def prepare(self) -> WorkerInfo:
        """Load the model and schedules, warm up, then start metrics and the heartbeat."""
        settings = self.settings
        device = pick_device(settings.device)
        if settings.torch_threads:
            torch.set_num_threads(settings.torch_threads)
        options = FastPathOptions.for_device(
            device,
            fp16=settings.fp16,
            sdpa=settings.sdpa,
            channels_last=settings.channels_last,
            compile=settings.compile,
            compile_mode=settings.compile_mode,
        )
        log.info("loading %s on %s (%s)", self.model, device, options.label)
        source = resolve_model(self.model)
        pipe = load_pipeline(source, device, options)
        registry = ScheduleRegistry.default(settings.writable_schedule_dir)
        key = model_key(source)
        self.bank = SchedulerBank(pipe.scheduler.config, load_model_schedules(registry, key))
        self.engine = InferenceEngine(pipe, device)
        warm_batch_sizes = range(1, settings.max_batch_size + 1) if options.compile else [1]
        self._warm_up(key, warm_batch_sizes)
        self.lifecycle = JobLifecycle(self.redis, settings, key, self.worker_id)
        self.lifecycle.ensure_group()
        self.metrics_server = MetricsServer.start(
            self.metrics.registry, settings.worker_metrics_host, settings.worker_metrics_port
        )
        width, height = self.engine.native_size
        defaults = model_defaults(self.model)
        guidance = defaults.guidance_scale or DEFAULT_GUIDANCE
        default = self.bank.default_schedule(guidance)
        info = WorkerInfo(
            worker_id=self.worker_id,
            model=self.model,
            model_key=key,
            device=str(device),
            schedules=self.bank.schedules,
            default_schedule=default.name if default else None,
            default_steps=defaults.num_inference_steps or settings.default_sampler_steps,
            default_guidance_scale=guidance,
            schedulers=self.bank.names,
            width=width,
            height=height,
            max_batch_size=settings.max_batch_size,
            metrics_port=self.metrics_server.port,
            pid=os.getpid(),
            host=socket.gethostname(),
            started_at=now(),
            version=__version__,
        )
        self.heartbeat = Heartbeat(
            self.redis,
            info,
            ttl_s=settings.heartbeat_ttl_s,
            period_s=min(settings.heartbeat_ttl_s, settings.lease_ms / 1000) / 3,
            on_beat=self._extend_leases,
        )
        self.heartbeat.start()
        log.info("worker ready: %s", info.model_dump_json())
        return info

    def _warm_up(self, key: str, batch_sizes: Iterable[int]) -> None:
        """Generate once per OLSS schedule (or one DDIM run when there is none) and batch size.

        With ``torch.compile`` on, every batch size the batcher can form is its own compiled
        shape, so all of them are warmed here and no request pays for a compile.
        """
        width, height = self.engine.native_size
        runs = [("olss", s.steps, s.guidance_scale) for s in self.bank.schedules]
        for scheduler, steps, guidance in runs or [WARM_UP_SCHEDULER]:
            for batch_size in batch_sizes:
                spec = JobSpec(
                    model=key,
                    prompt="warm-up",
                    width=width,
                    height=height,
                    steps=steps,
                    guidance_scale=guidance,
                    seed=0,
                    num_images=batch_size,
                    scheduler=scheduler,
                )
                self.engine.generate([spec], self.bank.get(scheduler, steps, guidance)[1])

    # -- main loop --------------------------------------------------------------------------

    def stop(self) -> None:
        """Ask the loop to stop after the running batch."""
        self._stopping.set()

    def run(self) -> None:
        """Serve until ``stop``."""
        while not self._stopping.is_set():
            try:
                self.run_once()
            except redis.RedisError as error:
                log.warning("redis error, retrying in %.0f s: %s", REDIS_RETRY_S, error)
                with self._held_lock:  # let their leases run out: they are delivered again
                    self._held.clear()
                self._stopping.wait(REDIS_RETRY_S)

    def run_once(self) -> None:
        """Claim what is available and process it in compatible batches."""
        deliveries = self._receive()
        jobs = self.lifecycle.load(deliveries)
        loaded = {job.message_id for job in jobs}
        self._release_ids(d.message_id for d in deliveries if d.message_id not in loaded)
        for batch in plan_batches(jobs, self.settings.max_batch_size):
            if self._stopping.is_set():
                self.lifecycle.hand_back(batch)
                self._release(batch)
                continue
            self._start_and_run(batch)

    def _receive(self) -> list[Delivery]:
        size = self.settings.max_batch_size
        got = self.lifecycle.reclaim(size)
        if len(got) < size:
            block_ms = None if got else READ_BLOCK_MS
            got += self.lifecycle.read_new(size - len(got), block_ms=block_ms)
        # Poll rather than BLOCK: Redis expires blocking reads only every 1/hz s (100 ms).
        deadline = time.monotonic() + self.settings.max_batch_wait_ms / 1000
        while got and len(got) < size:
            more = self.lifecycle.read_new(size - len(got), block_ms=None)
            got += more
            left = deadline - time.monotonic()
            if not more and left <= 0:
                break
            if not more:
                time.sleep(min(BATCH_POLL_S, left))
        with self._held_lock:
            self._held.update(d.message_id for d in got)
        return got

    def _start_and_run(self, batch: list[ClaimedJob]) -> None:
        started = []
        for outcome, job in self.lifecycle.start(batch):
            if outcome is Start.RUN:
                started.append(job)
                continue
            self._release([job])
            if outcome is Start.DEAD:
                self.metrics.jobs.labels(status="failed").inc()
        if started:
            self._run(started)

    def _run(self, jobs: list[ClaimedJob]) -> None:
        """Run one batch; on an error split it, so a bad job fails alone."""
        canceled: set[str] = set()
        first = jobs[0].spec
        try:
            label, scheduler = self.bank.get(first.scheduler, first.steps, first.guidance_scale)
            self._inject_fault(jobs)
            output = self.engine.generate(
                [job.spec for job in jobs], scheduler, self._step_hook(jobs, canceled)
            )
        except BatchInterrupted:
            return
        except Exception as error:  # a failed batch must not take the worker down
            remaining = [job for job in jobs if job.id not in canceled]
            if len(remaining) > 1:
                log.warning("batch of %d failed (%s); splitting", len(remaining), error)
                _free_device_memory()
                for half in halves(remaining):
                    self._run(half)
            elif remaining:
                log.exception("job %s failed", remaining[0].id)
                status = self.lifecycle.fail(remaining[0], error)
                self.metrics.jobs.labels(status="failed" if status.finished else "retried").inc()
                self._release(remaining)
            return
        self._store(jobs, output, label, canceled)

    def _inject_fault(self, jobs: list[ClaimedJob]) -> None:
        marker = self.settings.test_fail_prompt
        if marker and any(marker in job.spec.prompt for job in jobs):
            raise InjectedFault(f"prompt contains OLSS_TEST_FAIL_PROMPT={marker!r}")

    def _step_hook(self, jobs: list[ClaimedJob], canceled: set[str]) -> StepHook:
        """Per step: report progress, finish newly canceled jobs, stop when none is left."""
        delay_s = self.settings.test_step_delay_ms / 1000

        def on_step(step: int, total: int) -> bool:
            if delay_s:
                time.sleep(delay_s)
            active = [job for job in jobs if job.id not in canceled]
            asked = self.lifecycle.cancel_requested(active)
            for job in active:
                if job.id in asked:
                    self.lifecycle.finish_canceled(job)
                    canceled.add(job.id)
                    self._release([job])
                    self.metrics.jobs.labels(status="canceled").inc()
            active = [job for job in active if job.id not in canceled]
            if active:
                self.lifecycle.progress(active, step, total)
            return bool(active)

        return on_step

    def _store(
        self, jobs: list[ClaimedJob], output: BatchOutput, label: str, canceled: set[str]
    ) -> None:
        durations = output.durations
        batch_images = images(jobs)
        self.metrics.batch_size.observe(batch_images)
        results = []
        for job, pictures in zip(jobs, output.images, strict=True):
            if job.id in canceled:
                continue
            spec = job.spec
            encoded = [
                encode_image(picture, spec.output_format,
                             ImageParameters.of(spec, index, label, job.id))
                for index, picture in enumerate(pictures)
            ]
            created = job.record.created_at
            timings = Timings(
                queue=(job.record.started_at or created) - created,
                inference=durations["total"], total=now() - created,
                encode=durations["encode"], denoise=durations["denoise"],
                decode=durations["decode"], batch_size=batch_images,
            )
            results.append(JobResult(job, encoded, label, timings))
        self.lifecycle.succeed(results)
        self._release(result.job for result in results)
        for result in results:
            self._observe(result.timings)

    def _observe(self, timings: Timings) -> None:
        metrics = self.metrics
        metrics.queue_wait.observe(timings.queue)
        for stage in ("encode", "denoise", "decode"):
            metrics.inference.labels(stage=stage).observe(getattr(timings, stage))
        metrics.inference.labels(stage="total").observe(timings.inference)
        metrics.e2e.observe(timings.total)
        metrics.jobs.labels(status="succeeded").inc()

    # -- leases -----------------------------------------------------------------------------

    def _release(self, jobs: Iterable[ClaimedJob]) -> None:
        self._release_ids(job.message_id for job in jobs)

    def _release_ids(self, message_ids: Iterable[str]) -> None:
        with self._held_lock:
            self._held.difference_update(message_ids)

    def _extend_leases(self) -> None:
        with self._held_lock:
            held = sorted(self._held)
        self.lifecycle.extend_leases(held)

    def close(self) -> None:
        """Stop the heartbeat (the gateway stops routing here) and the metrics server."""
        if self.heartbeat is not None:
            self.heartbeat.stop()
        if self.metrics_server is not None:
            self.metrics_server.stop()
        self.redis.close()


def _free_device_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


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
