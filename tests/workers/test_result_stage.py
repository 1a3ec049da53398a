"""ResultStage on the real Redis: batch n is stored while batch n+1 runs, the images come out the
same as when stored in line (same seeds, same pixel bytes), a store's error reaches the serving
loop, and a stopping loop stores its last batch before it returns."""

from __future__ import annotations

import io
import threading
from collections.abc import Collection, Iterator

import pytest
import redis
import torch
from PIL import Image

from olss_core.job_states import JobStatus
from olss_core.keys import image_key, job_key
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobRecord, JobSpec
from olss_core.settings import Settings
from tests.support.fake_engine import FakeEngine
from tests.support.queued_jobs import enqueue, job_spec
from tests.support.torch_threads import single_torch_thread
from workers.batch_runner import BatchRunner
from workers.batch_window import BatchWindow
from workers.engine import Engine, Generation
from workers.inference import InferenceEngine
from workers.leases import LeaseTracker
from workers.lifecycle import ClaimedJob, JobLifecycle
from workers.receiver import BatchReceiver
from workers.result_stage import ResultSink, ResultStage
from workers.result_writer import ResultWriter
from workers.results import read_parameters
from workers.schedulers import SchedulerBank
from workers.serve_loop import ServeLoop
from workers.serving_engine import ServingEngine

HANDSHAKE_TIMEOUT_S = 10.0


def serve_loop(
    lifecycle: JobLifecycle, leases: LeaseTracker, engine: Engine, sink: ResultSink,
    stopping: threading.Event | None = None,
) -> ServeLoop:
    runner = BatchRunner(lifecycle, engine, leases, sink, WorkerMetrics.create(lifecycle.model))
    receiver = BatchReceiver(lifecycle, leases, max_entries=8, window=BatchWindow(8, 0))
    return ServeLoop(receiver, runner, lifecycle, leases, 8, stopping or threading.Event())


def status(db: redis.Redis, job_id: str) -> JobStatus:
    return JobRecord.from_hash(db.hgetall(job_key(job_id))).status


class HandshakeWriter(ResultWriter):
    """Stores batch 1 only once batch 2 has started on the engine, which can only happen if the
    store runs beside the serving loop rather than in it."""

    def __init__(self, *args: object, second_batch_started: threading.Event) -> None:
        super().__init__(*args)
        self.second_batch_started = second_batch_started
        self.stored: list[list[str]] = []
        self.overlapped: list[bool] = []

    def store(
        self, batch: list[ClaimedJob], generation: Generation, canceled: Collection[str] = ()
    ) -> None:
        if not self.stored:
            self.overlapped.append(self.second_batch_started.wait(HANDSHAKE_TIMEOUT_S))
        super().store(batch, generation, canceled)
        self.stored.append([job.spec.prompt for job in batch])


def test_batch_n_is_stored_while_batch_n_plus_1_runs(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    ids = enqueue(settings, [job_spec(prompt="first"), job_spec(prompt="second", steps=4)])
    second_started = threading.Event()
    engine = FakeEngine(before_step=lambda step: second_started.set() if engine.calls[1:] else None)
    writer = HandshakeWriter(lifecycle, leases, metrics, second_batch_started=second_started)
    stage = ResultStage(writer)
    try:
        serve_loop(lifecycle, leases, engine, stage).run_once()
        stage.drain()
    finally:
        stage.close()
    assert writer.overlapped == [True]
    assert writer.stored == [["first"], ["second"]]
    assert {status(db, job_id) for job_id in ids} == {JobStatus.SUCCEEDED}
    assert leases.held() == frozenset()


@pytest.fixture()
def tiny_engine(tiny_pipeline) -> Iterator[ServingEngine]:
    with single_torch_thread():
        bank = SchedulerBank(tiny_pipeline.scheduler.config, schedules=[])
        yield ServingEngine(InferenceEngine(tiny_pipeline, torch.device("cpu")), bank)


def stored_pixels(settings: Settings, job_id: str, count: int) -> list[tuple[bytes, dict]]:
    """Each image's pixel bytes and its parameters (all but the job id)."""
    client = redis.Redis.from_url(settings.redis_url)
    try:
        found = []
        for index in range(count):
            data = client.get(image_key(job_id, index))
            parameters = read_parameters(data).model_dump(exclude={"job_id"})
            with Image.open(io.BytesIO(data)) as image:
                found.append((image.tobytes(), parameters))
        return found
    finally:
        client.close()


def test_overlapped_stores_keep_the_images_of_the_sequential_path(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker, metrics: WorkerMetrics,
    tiny_engine: ServingEngine,
) -> None:
    specs: list[JobSpec] = [
        job_spec(prompt="a red fox", seed=3, num_images=2, scheduler="ddim", steps=2),
        job_spec(prompt="a blue bird", seed=9, scheduler="ddim", steps=3),
        job_spec(prompt="a green frog", seed=5, scheduler="ddim", steps=2),
    ]
    results = []
    for overlap in (True, False):
        ids = enqueue(settings, specs)
        writer = ResultWriter(lifecycle, leases, metrics)
        sink: ResultSink = ResultStage(writer) if overlap else writer
        serve_loop(lifecycle, leases, tiny_engine, sink).run_once()
        sink.drain()
        if isinstance(sink, ResultStage):
            sink.close()
        results.append([stored_pixels(settings, job_id, spec.num_images)
                        for job_id, spec in zip(ids, specs, strict=True)])
    overlapped, sequential = results
    assert overlapped == sequential
    assert len({pixels for job in overlapped for pixels, _ in job}) == 4  # four distinct images


class FailingWriter(ResultWriter):
    def store(
        self, batch: list[ClaimedJob], generation: Generation, canceled: Collection[str] = ()
    ) -> None:
        raise redis.ConnectionError("redis went away")


def test_a_store_error_comes_back_from_the_next_handover(
    settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker, metrics: WorkerMetrics,
) -> None:
    enqueue(settings, [job_spec()])
    stage = ResultStage(FailingWriter(lifecycle, leases, metrics))
    try:
        serve_loop(lifecycle, leases, FakeEngine(), stage).run_once()  # handed over: no error
        with pytest.raises(redis.ConnectionError, match="went away"):
            stage.drain()
        stage.drain()  # reported once
    finally:
        stage.close()


class SlowWriter(ResultWriter):
    """Takes a while to store, so a loop that returned without draining would be caught."""

    def store(
        self, batch: list[ClaimedJob], generation: Generation, canceled: Collection[str] = ()
    ) -> None:
        threading.Event().wait(0.3)
        super().store(batch, generation, canceled)


def test_a_stopping_loop_stores_its_last_batch_before_it_returns(
    db: redis.Redis, settings: Settings, lifecycle: JobLifecycle, leases: LeaseTracker,
    metrics: WorkerMetrics,
) -> None:
    (job_id,) = enqueue(settings, [job_spec()])
    stopping = threading.Event()
    engine = FakeEngine(before_step=lambda step: stopping.set())  # SIGTERM mid-batch
    stage = ResultStage(SlowWriter(lifecycle, leases, metrics))
    try:
        serve_loop(lifecycle, leases, engine, stage, stopping).run()
        assert status(db, job_id) is JobStatus.SUCCEEDED
    finally:
        stage.close()
    assert leases.held() == frozenset()
