"""Store a finished batch: encoded images, timings, one ``succeed`` for all, then the metrics,
the measured throughput and one log line per job (``workers.job_log``).

``on_stored(jobs, server_time)`` hears of every stored batch (the batch window counts the jobs
whose clients may come back with their next request)."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from PIL import Image

from olss_core.metrics import JobOutcome, Stage, WorkerMetrics
from olss_core.protocol import Timings, now
from workers.batching import images
from workers.engine import Generation
from workers.job_log import Outcome, log_job
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle, JobResult
from workers.results import ImageParameters, encode_image
from workers.throughput import ThroughputMeter


@dataclass(frozen=True)
class ResultWriter:
    """Turns a batch's ``Generation`` into stored results and observed metrics."""

    lifecycle: JobLifecycle
    leases: LeaseTracker
    metrics: WorkerMetrics
    on_stored: Callable[[int, float], None] | None = None
    throughput: ThroughputMeter | None = None

    def store(
        self, batch: list[ClaimedJob], generation: Generation, canceled: Collection[str] = ()
    ) -> None:
        """Store every job of ``batch`` except those in ``canceled`` (already finished).

        ``generation.output.images`` is in ``batch`` order; every job's ``batch_size`` timing
        is the images of the whole batch as it ran.
        """
        batch_images = images(batch)
        self.metrics.batch_size.observe(batch_images)
        output = generation.output
        results = [
            JobResult(job, self._encode(job, pictures, generation.schedule), generation.schedule,
                      self._timings(job, output.durations, batch_images))
            for job, pictures in zip(batch, output.images, strict=True)
            if job.id not in canceled
        ]
        stored_at = self.lifecycle.succeed(results)
        if stored_at is not None and self.on_stored is not None:
            self.on_stored(len(results), stored_at)
        self.leases.release(result.job for result in results)
        self.metrics.images.inc(sum(len(result.images) for result in results))
        if self.throughput is not None:
            self.throughput.observe(batch_images, output.durations[Stage.TOTAL])
        for result in results:
            self._observe(result.timings)
            log_job(result.job, Outcome.SUCCEEDED, batch_images, result.schedule, result.timings)

    def _encode(self, job: ClaimedJob, pictures: list[Image.Image], schedule: str) -> list[bytes]:
        spec = job.spec
        level = self.lifecycle.settings.png_compress_level
        return [
            encode_image(picture, spec.output_format,
                         ImageParameters.of(spec, index, schedule, job.id), level)
            for index, picture in enumerate(pictures)
        ]

    @staticmethod
    def _timings(
        job: ClaimedJob, durations: Mapping[Stage, float], batch_images: int
    ) -> Timings:
        created = job.record.created_at
        return Timings(
            queue=(job.record.started_at or created) - created,
            inference=durations[Stage.TOTAL], total=now() - created,
            encode=durations[Stage.ENCODE], denoise=durations[Stage.DENOISE],
            decode=durations[Stage.DECODE], batch_size=batch_images,
        )

    def drain(self) -> None:
        """Nothing to wait for: ``store`` returns once the batch is stored."""

    def _observe(self, timings: Timings) -> None:
        metrics = self.metrics
        metrics.queue_wait.observe(timings.queue)
        metrics.inference.labels(stage=Stage.ENCODE).observe(timings.encode)
        metrics.inference.labels(stage=Stage.DENOISE).observe(timings.denoise)
        metrics.inference.labels(stage=Stage.DECODE).observe(timings.decode)
        metrics.inference.labels(stage=Stage.TOTAL).observe(timings.inference)
        metrics.e2e.observe(timings.total)
        metrics.jobs.labels(status=JobOutcome.SUCCEEDED).inc()
