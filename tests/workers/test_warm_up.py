"""Warm-up runs the engine once per served OLSS schedule and batch size, at its native size."""

from __future__ import annotations

from olss_core.protocol import ScheduleInfo
from tests.support.fake_engine import FakeEngine
from workers.warm_up import FALLBACK_RUN, warm_up

SCHEDULES = [
    ScheduleInfo(name=f"tiny-sd__{steps}steps", steps=steps, guidance_scale=7.5)
    for steps in (4, 5)
]


def runs(engine: FakeEngine) -> list[tuple[str, int, float, int, int]]:
    return [
        (spec.scheduler, spec.steps, spec.guidance_scale, spec.num_images, spec.width)
        for (spec,) in engine.calls
    ]


def test_every_schedule_is_run_at_every_batch_size() -> None:
    engine = FakeEngine()
    warm_up(engine, "tiny-sd", SCHEDULES, batch_sizes=[1, 2])
    assert runs(engine) == [
        ("olss", 4, 7.5, 1, 32), ("olss", 4, 7.5, 2, 32),
        ("olss", 5, 7.5, 1, 32), ("olss", 5, 7.5, 2, 32),
    ]


def test_a_model_without_schedules_warms_up_with_one_short_sampler_run() -> None:
    engine = FakeEngine()
    warm_up(engine, "tiny-sd", [], batch_sizes=[1])
    assert runs(engine) == [(*FALLBACK_RUN, 1, 32)]
