"""Schedule files from anywhere: every bad file is skipped with a warning naming it.

A registry folder holds one good schedule and one bad file per case (non-UTF-8, JSON nested
10^5 deep, a non-integer ``num_train_timesteps``, a FIFO, a symlink to ``/dev/zero``, a file
past the size cap, coefficients of 1e300, timesteps 50000 and -1, a folder named ``*.json``):
listing it returns the good one only, within seconds (a FIFO or ``/dev/zero`` never hangs or
eats memory), and logs one WARNING naming each bad file. A user's file with a built-in's name
shadows it, with a warning naming both. A real worker started on such a folder becomes ready and
serves the built-in schedules.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from schedules.registry import BUILTIN_DIR, ScheduleRegistry
from schedules.schedule_file import MAX_FILE_BYTES, Schedule
from tests.support.processes import service_env, start_worker
from tests.support.redis_db import clean_db, redis_url

TRUST_DB = 12
LIST_TIMEOUT_S = 20.0


def good_dict(make_schedule: Callable[..., Schedule]) -> dict:
    return make_schedule(steps=3).to_dict()


def write_json(path: Path, data: object) -> None:
    path.write_text(json.dumps(data), encoding="utf-8")


def _with(data: dict, **changes: object) -> dict:
    return {**data, **changes}


def bad_files(folder: Path, good: dict) -> dict[str, str]:
    """Write one bad file per case into ``folder``; file name -> what its warning says."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "latin1.json").write_bytes(json.dumps(good).encode() + b"\xff\xfe")
    (folder / "nested.json").write_text("[" * 100_000 + "]" * 100_000)
    teacher = good["teacher"]
    for name, horizon in (("horizon-string", "1000.5"), ("horizon-float", 1000.5)):
        write_json(folder / f"{name}.json", _with(good, teacher={
            **teacher, "config": {**teacher["config"], "num_train_timesteps": horizon}}))
    os.mkfifo(folder / "fifo.json")
    (folder / "zero.json").symlink_to("/dev/zero")
    (folder / "huge.json").write_text(json.dumps(good) + " " * MAX_FILE_BYTES)
    rows = [list(row) for row in good["coefficients"]]
    rows[1][0] = 1e300
    write_json(folder / "huge-coefficient.json", _with(good, coefficients=rows))
    write_json(folder / "late-timestep.json", _with(good, timesteps=[50000, 500, 100]))
    write_json(folder / "negative-timestep.json", _with(good, timesteps=[900, 500, -1]))
    (folder / "folder.json").mkdir()
    return {
        "latin1.json": "not UTF-8",
        "nested.json": "nested too deeply",
        "horizon-string.json": "num_train_timesteps must be a positive integer",
        "horizon-float.json": "num_train_timesteps must be a positive integer",
        "fifo.json": "not a regular file (a FIFO)",
        "zero.json": "not a regular file (a character device)",
        "huge.json": f"more than the {MAX_FILE_BYTES}",
        "huge-coefficient.json": "coefficients[1][0]",
        "late-timestep.json": "training range [0, 1000), got 50000",
        "negative-timestep.json": "training range [0, 1000), got -1",
        "folder.json": "not a regular file (a folder)",
    }


def listed_in_time(registry: ScheduleRegistry) -> list:
    """``registry.list()`` in a thread: a hang (a FIFO opened blocking) fails instead."""
    result: list = []
    thread = threading.Thread(target=lambda: result.append(registry.list()), daemon=True)
    thread.start()
    thread.join(LIST_TIMEOUT_S)
    assert not thread.is_alive(), f"listing the registry took over {LIST_TIMEOUT_S} s"
    return result[0]


def test_every_bad_file_is_skipped_with_a_warning_naming_it(
    tmp_path: Path, make_schedule, caplog: pytest.LogCaptureFixture
) -> None:
    good = good_dict(make_schedule)
    expected = bad_files(tmp_path, good)
    write_json(tmp_path / "good.json", good)
    registry = ScheduleRegistry(tmp_path)
    with caplog.at_level(logging.WARNING, logger="schedules.registry"):
        entries = listed_in_time(registry)
        listed_in_time(registry)  # the second listing warns no more
    assert [e.name for e in entries] == ["good"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    for name, problem in expected.items():
        about = [w for w in warnings if str(tmp_path / name) in w]
        assert len(about) == 1, (name, warnings)
        assert problem in about[0], about[0]
    assert len(warnings) == len(expected)


def test_a_users_file_shadows_the_builtin_of_that_name_with_a_warning_naming_both(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    builtin = sorted(BUILTIN_DIR.glob("*.json"))[0]
    mine = Schedule.load(builtin)
    mine = Schedule.from_dict({**mine.to_dict(), "num_examples": mine.num_examples + 1})
    write_json(tmp_path / builtin.name, mine.to_dict())
    registry = ScheduleRegistry.default(tmp_path)
    with caplog.at_level(logging.WARNING, logger="schedules.registry"):
        entries = {e.name: e for e in registry.list()}
    assert entries[builtin.stem].path == tmp_path / builtin.name
    loaded = registry.get(mine.model_id, mine.num_steps, mine.guidance_scale)
    assert loaded.num_examples == mine.num_examples
    (warning,) = [r.getMessage() for r in caplog.records if "shadows" in r.getMessage()]
    assert str(tmp_path / builtin.name) in warning and str(builtin) in warning


def test_a_bad_users_file_leaves_the_builtin_of_that_name_in_service(tmp_path: Path) -> None:
    builtin = sorted(BUILTIN_DIR.glob("*.json"))[0]
    (tmp_path / builtin.name).write_bytes(b"\xff")
    entries = {e.name: e for e in ScheduleRegistry.default(tmp_path).list()}
    assert entries[builtin.stem].path == builtin


@pytest.mark.e2e
def test_a_worker_on_a_folder_of_bad_files_starts_and_names_them(
    tmp_path: Path, make_schedule
) -> None:
    folder = tmp_path / "schedules"
    expected = bad_files(folder, good_dict(make_schedule))
    with clean_db(TRUST_DB):
        env = service_env(redis_url(TRUST_DB), schedule_dir=folder, cache_dir=tmp_path / "cache")
        with start_worker(env) as worker:
            assert worker.info is not None
            builtin = {p.stem for p in BUILTIN_DIR.glob("*.json")}
            assert {s.name for s in worker.info.schedules} == builtin
            log = worker.log()
    for name in expected:
        assert str(folder / name) in log, name
