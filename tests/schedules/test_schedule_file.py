"""Schedule files: JSON round trip and clear errors for every kind of bad file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from schedules.schedule_file import Schedule, ScheduleFileError


def test_save_load_round_trip(tmp_path: Path, make_schedule) -> None:
    schedule = make_schedule()
    path = schedule.save(tmp_path / "s.json")
    loaded = Schedule.load(path)
    assert loaded == schedule
    assert loaded.fit_report.heldout.peer_errors == {"unipc": 0.2}
    assert len(loaded) == 3
    assert "pickle" not in path.read_text() and json.loads(path.read_text())["format_version"] == 1


def _write(tmp_path: Path, mutate, make_schedule) -> Path:
    data = make_schedule().to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d.update(format_version=99), "format_version"),
        (lambda d: d["coefficients"][1].__setitem__(0, float("nan")), "non-finite"),
        (lambda d: d["coefficients"][2].__setitem__(0, float("inf")), "non-finite"),
        (lambda d: d.update(timesteps=[991, 991, 391]), "strictly decreasing"),
        (lambda d: d.update(timesteps=[391, 591, 791]), "strictly decreasing"),
        (lambda d: d["coefficients"][1].pop(), "coefficients[1] must hold 3"),
        (lambda d: d["coefficients"].pop(), "one row per timestep"),
        (lambda d: d.pop("model_id"), "missing field"),
        (lambda d: d.update(method="magic"), "method"),
        (lambda d: d.update(init_noise_sigma=-1.0), "init_noise_sigma"),
        (lambda d: d["fit_report"].update(path=[0, 5, 5]), "path"),
    ],
)
def test_bad_file_raises_clear_error_naming_file(
    tmp_path: Path, mutate, problem: str, make_schedule
) -> None:
    path = _write(tmp_path, mutate, make_schedule)
    with pytest.raises(ScheduleFileError, match=re.escape(problem)) as info:
        Schedule.load(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["{not json", "", "[1, 2, 3]", '{"format_version": 1}'])
def test_malformed_json_raises_clear_error(tmp_path: Path, text: str) -> None:
    path = tmp_path / "broken.json"
    path.write_text(text)
    with pytest.raises(ScheduleFileError, match=r"broken\.json"):
        Schedule.load(path)


def test_missing_file_raises_schedule_file_error(tmp_path: Path) -> None:
    with pytest.raises(ScheduleFileError, match="cannot read"):
        Schedule.load(tmp_path / "absent.json")


def test_constructor_validates_too(make_schedule) -> None:
    schedule = make_schedule()
    with pytest.raises(ScheduleFileError, match="strictly decreasing"):
        Schedule(**{**schedule.__dict__, "timesteps": [1, 2, 3]})


def test_name_is_filesystem_safe(make_schedule) -> None:
    name = make_schedule(model="runwayml/stable-diffusion-v1-5").name
    assert "/" not in name and name.startswith("runwayml--stable-diffusion-v1-5__3steps")
