"""Schedule registry: hits, nearest guidance, misses that list what exists, model keys."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from schedules.registry import BUILTIN_DIR, ScheduleNotFound, ScheduleRegistry, model_key


def test_put_then_get_exact_steps_nearest_guidance(tmp_path: Path, make_schedule) -> None:
    registry = ScheduleRegistry(tmp_path)
    registry.put(make_schedule(steps=3, guidance=7.5))
    registry.put(make_schedule(steps=3, guidance=5.0))
    registry.put(make_schedule(steps=4, guidance=7.5))
    assert registry.get("tiny-sd", 3, 7.3).guidance_scale == 7.5
    assert registry.get("tiny-sd", 3, 5.2).guidance_scale == 5.0
    assert registry.get("tiny-sd", 4, 7.5).num_steps == 4
    names = {e.name for e in registry.list()}
    assert names == {make_schedule(3, 7.5).name, make_schedule(3, 5.0).name, make_schedule(4).name}


@pytest.mark.parametrize(("steps", "guidance"), [(5, 7.5), (3, 9.0)])
def test_miss_lists_available(tmp_path: Path, steps: int, guidance: float, make_schedule) -> None:
    registry = ScheduleRegistry(tmp_path)
    registry.put(make_schedule(steps=3, guidance=7.5))
    with pytest.raises(ScheduleNotFound, match=r"available: tiny-sd steps=3 guidance=7\.5"):
        registry.get("tiny-sd", steps, guidance)


def test_miss_on_empty_registry_names_folders(tmp_path: Path) -> None:
    with pytest.raises(LookupError, match="none"):
        ScheduleRegistry(tmp_path / "empty").get("tiny-sd", 3, 7.5)


def test_model_key_for_local_folder_and_hub_id(tmp_path: Path, make_schedule) -> None:
    folder = tmp_path / "tiny-sd"
    folder.mkdir()
    assert model_key(folder) == "tiny-sd"
    assert model_key(str(folder) + "/") == "tiny-sd"
    assert model_key("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    registry = ScheduleRegistry(tmp_path / "reg")
    registry.put(make_schedule(model="tiny-sd"))
    assert registry.get(folder, 3, 7.5).model_id == "tiny-sd"


def test_default_searches_writable_dir_first(tmp_path: Path, make_schedule) -> None:
    registry = ScheduleRegistry.default(tmp_path)
    assert registry.roots == [tmp_path, BUILTIN_DIR]
    assert registry.put(make_schedule()).parent == tmp_path
    assert registry.get("tiny-sd", 3, 7.5).num_steps == 3


def test_invalid_files_are_skipped_in_list(tmp_path: Path, make_schedule) -> None:
    (tmp_path / "junk.json").write_text("{oops")
    registry = ScheduleRegistry(tmp_path)
    registry.put(make_schedule())
    assert [e.steps for e in registry.list()] == [3]


def test_builtin_registry_is_package_data() -> None:
    assert BUILTIN_DIR.is_dir() and BUILTIN_DIR.parent.name == "schedules"


def test_registry_and_cli_import_without_torch() -> None:
    code = (
        "import sys, schedules, schedules.registry, schedules.schedule_file;"
        "import olss_cli.schedule_commands;"
        "assert schedules.ScheduleRegistry is schedules.registry.ScheduleRegistry;"
        "bad = [m for m in ('torch', 'diffusers', 'numpy') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])
