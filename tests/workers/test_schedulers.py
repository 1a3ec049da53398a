"""SchedulerBank over the built-in olss-digits schedules (4, 5, 6, 8 steps at guidance 4):
OLSS by exact steps at any served guidance (nearest: only guidance 4 is calibrated); the
table's samplers."""

from __future__ import annotations

import json
from pathlib import Path

import diffusers
import pytest

from olss_core.guidance import GUIDANCE_TOLERANCE, OLSS_GUIDANCE_RANGE
from olss_core.samplers import SAMPLERS, SCHEDULER_NAMES
from schedules import OLSSScheduler, ScheduleRegistry, model_key
from workers.embedded_model import DEFAULT_MODEL, resolve_model
from workers.schedulers import SchedulerBank, UnknownSchedule, load_model_schedules

MODEL_DIR = Path(resolve_model(DEFAULT_MODEL))
FIVE_STEPS = "olss-digits__5steps__cfg4__closed-loop"


@pytest.fixture(scope="module")
def bank(tmp_path_factory: pytest.TempPathFactory) -> SchedulerBank:
    registry = ScheduleRegistry.default(tmp_path_factory.mktemp("schedules"))
    config = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    return SchedulerBank(config, load_model_schedules(registry, model_key(MODEL_DIR)))


def test_olss_takes_the_exact_steps_at_any_served_guidance_and_says_how(
    bank: SchedulerBank,
) -> None:
    assert [(s.steps, s.guidance_scale) for s in bank.schedules] == [(4, 4), (5, 4), (6, 4), (8, 4)]
    assert all(s.served_guidance == list(OLSS_GUIDANCE_RANGE) for s in bank.schedules)
    label, scheduler = bank.get("olss", 5, 4.0)
    assert label == FIVE_STEPS and isinstance(scheduler, OLSSScheduler)
    low, high = OLSS_GUIDANCE_RANGE
    for guidance in (low, 4.0 - GUIDANCE_TOLERANCE, 4.3, 7.5, high):
        label, scheduler = bank.get("olss", 5, guidance)
        assert label.startswith(f"{FIVE_STEPS} (nearest: cfg4 for {guidance:g}")
        assert isinstance(scheduler, OLSSScheduler)
    assert bank.get("olss", 5, 7.5)[1] is bank.get("olss", 5, 7.5)[1]  # cached
    with pytest.raises(UnknownSchedule, match="served: 4@4, 5@4, 6@4, 8@4"):
        bank.get("olss", 5, high + 2 * GUIDANCE_TOLERANCE)
    with pytest.raises(UnknownSchedule):
        bank.get("olss", 7, 4.0)


def test_every_sampler_of_the_table_is_served_on_the_models_config(bank: SchedulerBank) -> None:
    assert bank.names == list(SCHEDULER_NAMES)
    for name, spec in SAMPLERS.items():
        label, scheduler = bank.get(name, 25, 7.5)
        assert label == name
        assert isinstance(scheduler, getattr(diffusers, spec.diffusers_class))
        assert scheduler.config.beta_schedule == "scaled_linear"
    with pytest.raises(UnknownSchedule, match="unknown scheduler 'heun'"):
        bank.get("heun", 25, 7.5)


def test_the_default_schedule_is_five_steps(bank: SchedulerBank) -> None:
    default = bank.default_schedule(7.5)
    assert default is not None and default.name == FIVE_STEPS
