"""SchedulerBank at any guidance: a calibrated grid's blends (cached, labelled), the nearest
outside it, and a schedule worse than its held-out peer served by that peer."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import diffusers
import pytest

from olss_core.guidance import OLSS_GUIDANCE_RANGE
from olss_core.samplers import PEERS, SAMPLERS
from schedules import OLSSScheduler
from schedules.schedule_file import HeldoutReport, Schedule
from tests.support.schedules import build_schedule
from workers.embedded_model import DEFAULT_MODEL, resolve_model
from workers.schedulers import BLEND_CACHE_SIZE, SchedulerBank

CONFIG = json.loads(
    (Path(resolve_model(DEFAULT_MODEL)) / "scheduler" / "scheduler_config.json").read_text()
)


def at(guidance: float, steps: int = 3) -> Schedule:
    """A ``steps``-step schedule at ``guidance`` whose first weights are the guidance (so a
    blend's weights show where it lies); every one shares one path."""
    base = build_schedule(steps=steps)
    return replace(base, guidance_scale=guidance,
                   coefficients=[[guidance, *row[1:]] for row in base.coefficients])


def test_between_calibrated_scales_the_bank_serves_a_cached_labelled_blend() -> None:
    bank = SchedulerBank(CONFIG, [at(3.0), at(5.0), at(7.5)])
    name = at(3.0).name.replace("cfg3", "cfg4.2")
    label, scheduler = bank.get("olss", 3, 4.2)
    assert label == f"{name} (blend of cfg3 and cfg5 at 4.2)"
    assert isinstance(scheduler, OLSSScheduler) and scheduler.config.guidance_scale == 4.2
    assert bank.get("olss", 3, 4.2)[1] is scheduler
    assert bank.get("olss", 3, 4.2004)[1] is scheduler  # the key rounds to 3 decimals
    assert bank.get("olss", 3, 5.0) == (at(5.0).name, bank.get("olss", 3, 5.0)[1])
    label, _ = bank.get("olss", 3, OLSS_GUIDANCE_RANGE[1])
    assert label.endswith("(nearest: cfg7.5 for 15 (outside 3 to 7.5))")
    for g in range(BLEND_CACHE_SIZE + 1):  # the cache is bounded: old blends are made again
        bank.get("olss", 3, 3.0 + g / (BLEND_CACHE_SIZE + 1))
    assert bank.get("olss", 3, 4.2)[1] is not scheduler
    assert [s.served_guidance for s in bank.schedules] == [list(OLSS_GUIDANCE_RANGE)] * 3


def test_blended_weights_lie_between_the_neighbours() -> None:
    bank = SchedulerBank(CONFIG, [at(3.0), at(5.0)])
    _, scheduler = bank.get("olss", 3, 4.5)
    assert [row[0] for row in scheduler.config.coefficients] == pytest.approx([4.5] * 3)


def test_a_schedule_worse_than_its_held_out_peer_is_served_by_that_peer() -> None:
    worse = HeldoutReport(4, 0.3, {"unipc": 0.2, "dpmsolver++": 0.25}, "unipc", "unipc wins")
    schedule = at(4.0).with_heldout(worse)
    bank = SchedulerBank(CONFIG, [schedule])
    assert [s.name for s in bank.schedules] == [schedule.name]  # still listed
    label, scheduler = bank.get("olss", 3, 4.0)
    assert label.startswith(f"unipc (instead of {schedule.name}")
    assert isinstance(scheduler, getattr(diffusers, SAMPLERS["unipc"].diffusers_class))
    label, scheduler = bank.get("olss", 3, 9.0)
    assert label.startswith("unipc (instead of") and not isinstance(scheduler, OLSSScheduler)


@pytest.mark.parametrize("report_name", sorted(PEERS))
def test_each_peer_by_its_fit_report_name_is_served_when_it_wins(report_name: str) -> None:
    """The fit report names peers as calibration does (``PEERS``' keys, e.g. "dpmsolver++(2M)");
    the worker serves the sampler that name stands for."""
    errors = {name: 0.25 for name in PEERS} | {report_name: 0.2}
    schedule = at(4.0).with_heldout(HeldoutReport(4, 0.3, errors, report_name, "a peer wins"))
    label, scheduler = SchedulerBank(CONFIG, [schedule]).get("olss", 3, 4.0)
    sampler = PEERS[report_name]
    assert label.startswith(f"{sampler} (instead of {schedule.name}")
    assert isinstance(scheduler, getattr(diffusers, SAMPLERS[sampler].diffusers_class))
