"""Schedule files: JSON round trip and clear errors for every kind of bad file."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from schedules.schedule_file import HeldoutReport, Schedule, ScheduleFileError


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


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda d: d["coefficients"][1].__setitem__(0, 1e300), "coefficients[1][0]"),
        (lambda d: d["coefficients"][2].__setitem__(3, -2e6), "coefficients[2][3]"),
        (lambda d: d.update(timesteps=[50000, 791, 591]), "training range [0, 1000), got 50000"),
        (lambda d: d.update(timesteps=[991, 791, -1]), "training range [0, 1000), got -1"),
        (lambda d: d.update(timesteps=[1000, 791, 591]), "got 1000"),
        (lambda d: d["teacher"]["config"].update(num_train_timesteps=1000.5), "positive integer"),
        (lambda d: d["teacher"]["config"].update(num_train_timesteps="1000"), "positive integer"),
        (lambda d: d["teacher"]["config"].update(num_train_timesteps=True), "positive integer"),
        (lambda d: d["fit_report"].update(step_errors=[0.1, 1e400, 0.1]), "non-finite"),
        (lambda d: d["fit_report"]["heldout"].update(olss_error=-1.0), "olss_error"),
        (lambda d: d.update(prediction_type="x0"), "prediction_type"),
        (
            lambda d: d.update(
                prediction_type="v_prediction",
                teacher={**d["teacher"], "config": {"prediction_type": "epsilon"}},
            ),
            "differs from the teacher",
        ),
    ],
)
def test_physically_impossible_file_is_rejected(
    tmp_path: Path, mutate, problem: str, make_schedule
) -> None:
    path = _write(tmp_path, mutate, make_schedule)
    with pytest.raises(ScheduleFileError, match=re.escape(problem)) as info:
        Schedule.load(path)
    assert str(path) in str(info.value)


def test_infinite_error_in_file_is_rejected(tmp_path: Path, make_schedule) -> None:
    """JSON has no infinity; a float too large for a double (1e400) parses as one."""
    text = make_schedule().to_json().replace('"olss_error": 0.05', '"olss_error": 1e400')
    path = tmp_path / "inf.json"
    path.write_text(text)
    with pytest.raises(ScheduleFileError, match=r"inf\.json.*olss_error"):
        Schedule.load(path)


def test_a_timestep_range_follows_the_teachers_num_train_timesteps(make_schedule) -> None:
    data = make_schedule().to_dict()
    data["teacher"]["config"]["num_train_timesteps"] = 2000
    data["timesteps"] = [1999, 1200, 5]
    assert Schedule.from_dict(data).timesteps == [1999, 1200, 5]
    data["teacher"]["config"]["num_train_timesteps"] = 500
    with pytest.raises(ScheduleFileError, match=r"\[0, 500\), got 1999, 1200"):
        Schedule.from_dict(data)


def test_non_utf8_file_is_a_schedule_file_error_naming_it(tmp_path: Path, make_schedule) -> None:
    path = tmp_path / "latin1.json"
    path.write_bytes(make_schedule().to_json().replace("tiny-sd", "tiny-s\u00e9").encode("latin-1"))
    with pytest.raises(ScheduleFileError, match=r"latin1\.json: not UTF-8"):
        Schedule.load(path)


@pytest.mark.parametrize("depth", [40, 100_000])
def test_deeply_nested_json_is_a_schedule_file_error_naming_it(tmp_path: Path, depth: int) -> None:
    path = tmp_path / "deep.json"
    path.write_text('{"a": ' + "[" * depth + "]" * depth + "}")
    with pytest.raises(ScheduleFileError, match=r"deep\.json: JSON nested too deeply"):
        Schedule.load(path)


def test_prediction_type_defaults_to_the_teachers_and_is_checked(make_schedule) -> None:
    data = make_schedule().to_dict()
    assert data["prediction_type"] == "epsilon"
    del data["prediction_type"]  # a file from before prediction types were recorded
    data["teacher"]["config"]["prediction_type"] = "v_prediction"
    schedule = Schedule.from_dict(data)
    assert schedule.prediction_type == "v_prediction"
    schedule.check_prediction_type("v_prediction")
    mismatch = r"prediction_type='v_prediction'.*prediction_type='epsilon'"
    with pytest.raises(ValueError, match=mismatch):
        schedule.check_prediction_type("epsilon")


def test_worse_than_best_peer(make_schedule) -> None:
    schedule = make_schedule()  # OLSS 0.05 vs unipc 0.2
    assert schedule.worse_than_best_peer() is False
    heldout = schedule.fit_report.heldout
    assert heldout.best_peer == ("unipc", 0.2)
    worse = schedule.with_heldout(
        HeldoutReport(4, 0.3, {"unipc": 0.2, "ddim": 0.25}, "unipc", "OLSS is NOT the best")
    )
    assert worse.worse_than_best_peer() is True
    assert schedule.with_report(heldout=None).worse_than_best_peer() is None
