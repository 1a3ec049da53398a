"""SchedulerBank over the built-in olss-digits schedules (4, 5, 6, 8 steps on the guidance grid
1, 2, 4, 7.5, 15, for the embedded model's identity): OLSS by exact steps at any served
guidance (calibrated, fitted in g between two scales, the nearest outside the grid, or the
held-out peer when that did better); the table's samplers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import diffusers
import pytest

from olss_core.guidance import GUIDANCE_TOLERANCE
from olss_core.samplers import SAMPLERS, SCHEDULER_NAMES
from schedules import OLSSScheduler, Schedule, ScheduleRegistry, model_key
from schedules.calibration import DEFAULT_GUIDANCE_GRID, DEFAULT_STEPS
from schedules.model_identity import model_identity
from tests.support.redis_db import unit_settings
from workers.embedded_model import DEFAULT_MODEL, model_defaults, resolve_model
from workers.schedulers import SchedulerBank, UnknownSchedule, load_model_schedules, peer_instead
from workers.self_calibration import ModelToCalibrate, SelfCalibration

MODEL_DIR = Path(resolve_model(DEFAULT_MODEL))
IDENTITY = model_identity(MODEL_DIR)
LOW, HIGH = min(DEFAULT_GUIDANCE_GRID), max(DEFAULT_GUIDANCE_GRID)


@pytest.fixture(scope="module")
def shipped(tmp_path_factory: pytest.TempPathFactory) -> list[Schedule]:
    registry = ScheduleRegistry.default(tmp_path_factory.mktemp("schedules"))
    return load_model_schedules(registry, model_key(MODEL_DIR), IDENTITY)


@pytest.fixture(scope="module")
def bank(shipped: list[Schedule]) -> SchedulerBank:
    config = json.loads((MODEL_DIR / "scheduler" / "scheduler_config.json").read_text())
    return SchedulerBank(config, shipped)


def test_the_shipped_grid_is_the_calibration_defaults_for_the_embedded_models_identity(
    shipped: list[Schedule],
) -> None:
    assert [(s.num_steps, s.guidance_scale) for s in shipped] == [
        (k, g) for k in DEFAULT_STEPS for g in DEFAULT_GUIDANCE_GRID
    ]
    assert {s.model_identity for s in shipped} == {IDENTITY}
    for k in DEFAULT_STEPS:  # one path per step count, shared by the grid
        assert len({tuple(s.timesteps) for s in shipped if s.num_steps == k}) == 1


def test_a_worker_of_the_embedded_model_preloads_them_without_calibrating(tmp_path: Path) -> None:
    settings = unit_settings(schedule_dir=tmp_path / "schedules", auto_calibrate=True)
    guidance = model_defaults(DEFAULT_MODEL).guidance_scale
    target = ModelToCalibrate(None, str(MODEL_DIR), model_key(MODEL_DIR), IDENTITY, guidance)
    calibration = SelfCalibration(settings, None, "w", lambda _: pytest.fail("calibrating"))
    assert (
        calibration.ensure(target, ScheduleRegistry.default(settings.writable_schedule_dir)) is None
    )


def test_olss_takes_the_exact_steps_at_any_served_guidance_and_says_how(
    bank: SchedulerBank, shipped: list[Schedule]
) -> None:
    served = [LOW - GUIDANCE_TOLERANCE, HIGH + GUIDANCE_TOLERANCE]
    assert all(s.served_guidance == served for s in bank.schedules)
    for schedule in shipped:  # a calibrated scale: the schedule, or the peer that did better
        label, scheduler = bank.get("olss", schedule.num_steps, schedule.guidance_scale)
        peer = peer_instead(schedule)
        if peer is None:
            assert label == schedule.name and isinstance(scheduler, OLSSScheduler)
        else:
            assert label.startswith(f"{peer} (instead of {schedule.name}: ")
            assert isinstance(scheduler, getattr(diffusers, SAMPLERS[peer].diffusers_class))
    four = next(s for s in shipped if (s.num_steps, s.guidance_scale) == (5, 4.0))
    label, scheduler = bank.get("olss", 5, 4.4)
    blend = four.name.replace("__cfg4__", "__cfg4.4__")
    assert label == f"{blend} (fit in g of cfg4 to cfg7.5 at 4.4)"
    assert isinstance(scheduler, OLSSScheduler) and scheduler.config.guidance_scale == 4.4
    assert bank.get("olss", 5, 4.4)[1] is scheduler  # cached
    label, _ = bank.get("olss", 5, served[0])
    assert label.endswith(f"(nearest: cfg{LOW:g} for {served[0]:g} (outside {LOW:g} to {HIGH:g}))")
    label, _ = bank.get("olss", 5, served[1])
    assert label.endswith(f"(nearest: cfg{HIGH:g} for {served[1]:g} (outside {LOW:g} to {HIGH:g}))")
    every = ", ".join(f"{k}@{g:g}" for k in DEFAULT_STEPS for g in DEFAULT_GUIDANCE_GRID)
    with pytest.raises(UnknownSchedule, match=re.escape(f"served: {every}")):
        bank.get("olss", 5, served[1] + GUIDANCE_TOLERANCE)
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


def test_the_default_schedule_is_five_steps_at_the_nearest_calibrated_guidance(
    bank: SchedulerBank, shipped: list[Schedule]
) -> None:
    for guidance, nearest in ((4.0, 4.0), (7.5, 7.5), (5.0, 4.0), (20.0, HIGH)):
        default = bank.default_schedule(guidance)
        expected = next(s for s in shipped if (s.num_steps, s.guidance_scale) == (5, nearest))
        assert default is not None and default.name == expected.name
