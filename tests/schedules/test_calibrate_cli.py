"""The ``calibrate`` and ``schedules list|show`` subcommands, through a throwaway argparse main."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from olss_cli.schedule_commands import register
from schedules.calibration import default_prompts
from schedules.model_identity import model_identity
from schedules.registry import ScheduleRegistry
from schedules.schedule_file import Schedule


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="olss")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def test_calibrate_writes_validated_schedules(
    tiny_pipeline_dir: Path, tmp_path: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLSS_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "registry"
    argv = ["calibrate", "--model", str(tiny_pipeline_dir), "--steps", "2", "3"]
    argv += ["--teacher", "ddim:5", "--num-prompts", "3", "--num-validation", "1"]
    argv += ["--batch-size", "2", "--height", "16", "--width", "16", "--max-evaluations", "40"]
    argv += ["--guidance", "3", "7.5", "--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "held-out olss" in printed and "wrote" in printed
    assert re.search(r"calibration: \d+ model evaluations \(teacher 20, search \d+", printed)
    entries = ScheduleRegistry(out).list()
    assert sorted((e.steps, e.guidance) for e in entries) == [(2, 3), (2, 7.5), (3, 3), (3, 7.5)]
    schedule = ScheduleRegistry(out).get(tiny_pipeline_dir, 3, 7.5)
    assert schedule.model_id == "tiny-sd" and schedule.resolution == (16, 16)
    assert schedule.method == "closed-loop" and schedule.num_examples == 1
    low = ScheduleRegistry(out).get(tiny_pipeline_dir, 3, 3)
    assert low.timesteps == schedule.timesteps and low.coefficients != schedule.coefficients
    assert schedule.fit_report.guidance_grid == [3.0, 7.5]
    for entry in ScheduleRegistry(out).list():  # the table names the files as written
        assert f"{entry.path.stem} " in printed
    heldout = schedule.fit_report.heldout
    assert heldout.num_examples == 1
    assert heldout.olss_stats.worst_condition == default_prompts()[2]  # the held-out prompt
    assert set(heldout.peer_errors) == {"dpmsolver++(2M)", "unipc"}
    assert ("NOT the best" in heldout.note) == (heldout.best != "olss")
    cost = schedule.fit_report.cost
    assert 0 < cost.evaluations < cost.calibration_evaluations
    # Fitted on these weights: a worker serves the files to this model only.
    identity = model_identity(tiny_pipeline_dir, tmp_path / "cache")
    assert identity.startswith("local:tiny-sd@")
    registry = ScheduleRegistry(out)
    assert {registry.find(e.name).model_identity for e in registry.list()} == {identity}


def test_list_and_show(tmp_path: Path, make_schedule, capsys) -> None:
    registry = ScheduleRegistry(tmp_path)
    path = registry.put(make_schedule())
    assert main(["schedules", "list", "--dir", str(tmp_path)]) == 0
    assert path.stem in capsys.readouterr().out
    assert main(["schedules", "show", path.stem, "--dir", str(tmp_path)]) == 0
    shown = capsys.readouterr().out
    assert Schedule.from_dict(__import__("json").loads(shown)) == Schedule.load(path)
    assert main(["schedules", "show", "nope", "--dir", str(tmp_path)]) == 1
    assert "available: tiny-sd steps=3" in capsys.readouterr().err


def test_calibrate_requires_model() -> None:
    with pytest.raises(SystemExit):
        main(["calibrate", "--steps", "3"])
