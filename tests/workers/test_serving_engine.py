"""ServingEngine on the tiny pipeline: a batch runs with the scheduler its specs name."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from olss_core.metrics import Stage
from tests.support.queued_jobs import job_spec
from tests.support.torch_threads import single_torch_thread
from workers.inference import InferenceEngine
from workers.schedulers import SchedulerBank, UnknownSchedule
from workers.serving_engine import ServingEngine


@pytest.fixture()
def engine(tiny_pipeline) -> Iterator[ServingEngine]:
    with single_torch_thread():
        bank = SchedulerBank(tiny_pipeline.scheduler.config, schedules=[])
        yield ServingEngine(InferenceEngine(tiny_pipeline, torch.device("cpu")), bank)


def test_a_batch_runs_with_the_sampler_its_specs_name(engine: ServingEngine) -> None:
    specs = [job_spec(scheduler="ddim", steps=2, num_images=2), job_spec(scheduler="ddim", steps=2)]
    generation = engine.generate(specs)
    assert generation.schedule == "ddim"
    assert [len(images) for images in generation.output.images] == [2, 1]
    assert set(generation.output.durations) == set(Stage)
    assert engine.native_size == (32, 32)


def test_an_unserved_schedule_raises(engine: ServingEngine) -> None:
    with pytest.raises(UnknownSchedule, match="served: none"):
        engine.generate([job_spec(scheduler="olss", steps=5)])
