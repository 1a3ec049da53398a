"""Model identity: schedules follow the weights, not the folder name (issue 9)."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pytest

from schedules.model_identity import CACHE_FILE, SAMPLE_BYTES, model_identity
from schedules.registry import ScheduleNotFound, ScheduleRegistry
from tests.support.schedules import build_schedule


def model_folder(root: Path, weights: bytes, config: dict | None = None) -> Path:
    """A diffusers-style folder named ``model`` with a UNet config and weights file."""
    unet = root / "model" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text(json.dumps(config or {"sample_size": 8}))
    (unet / "diffusion_pytorch_model.safetensors").write_bytes(weights)
    return root / "model"


def test_two_folders_named_model_with_different_weights_differ(tmp_path: Path) -> None:
    first = model_folder(tmp_path / "a", b"\x01" * 1000)
    second = model_folder(tmp_path / "b", b"\x02" * 1000)
    same = model_folder(tmp_path / "c", b"\x01" * 1000)
    assert model_identity(first) != model_identity(second)
    assert model_identity(first) == model_identity(same)  # identity is content, not place
    assert model_identity(first).startswith("local:model@")


def test_a_different_unet_config_or_a_change_at_either_end_of_the_weights_differs(
    tmp_path: Path,
) -> None:
    size = 3 * SAMPLE_BYTES
    base = model_identity(model_folder(tmp_path / "base", bytes(size)))
    config = model_identity(model_folder(tmp_path / "cfg", bytes(size), {"sample_size": 16}))
    tail = model_identity(model_folder(tmp_path / "tail", bytes(size - 1) + b"\x01"))
    middle = model_identity(model_folder(  # the middle MiB is not read: cheap by design
        tmp_path / "mid", bytes(size // 2) + b"\x01" + bytes(size - size // 2 - 1)))
    assert len({base, config, tail}) == 3
    assert middle == base


def test_the_identity_is_cached_and_recomputed_when_the_weights_change(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "m", b"\x01" * 1000)
    cache = tmp_path / "cache"
    first = model_identity(folder, cache)
    stored = json.loads((cache / CACHE_FILE).read_text())
    assert stored[str(folder.resolve())]["identity"] == first
    weights = folder / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(b"\x02" * 1000)
    os.utime(weights, ns=(1, 1))  # a new modification time
    assert model_identity(folder, cache) != first


def test_a_hub_id_without_a_cached_snapshot_is_its_id(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert model_identity("nobody/not-cached-model") == "hub:nobody/not-cached-model"


def test_a_hub_id_names_the_commit_of_its_cached_snapshot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--someone--sd"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "model_index.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.chdir(tmp_path)
    assert model_identity("someone/sd") == f"hub:someone/sd@{commit}"


def test_a_file_with_an_identity_serves_only_that_identity(tmp_path: Path) -> None:
    registry = ScheduleRegistry(tmp_path)
    mine = replace(build_schedule(steps=4, model="model"), model_identity="local:model@aaaa")
    theirs = replace(build_schedule(steps=4, model="model"), model_identity="local:model@bbbb")
    assert mine.name != theirs.name  # two models named `model` do not overwrite each other
    registry.put(mine)
    registry.put(theirs)
    assert registry.get("model", 4, 7.5, identity="local:model@aaaa").model_identity == (
        "local:model@aaaa")
    assert registry.get("model", 4, 7.5, identity="local:model@bbbb").model_identity == (
        "local:model@bbbb")
    with pytest.raises(ScheduleNotFound):
        registry.get("model", 4, 7.5, identity="local:model@cccc")


def test_an_old_file_without_an_identity_still_loads_by_name(tmp_path: Path) -> None:
    registry = ScheduleRegistry(tmp_path)
    old = build_schedule(steps=4, model="model")
    data = old.to_dict()
    del data["model_identity"]  # written before identities existed
    (tmp_path / f"{old.name}.json").write_text(json.dumps(data))
    loaded = registry.get("model", 4, 7.5, identity="local:model@anything")
    assert loaded.model_identity == ""
    mine = replace(build_schedule(steps=4, model="model"), model_identity="local:model@aaaa")
    registry.put(mine)  # a file for the identity wins over the name-only one
    assert registry.get("model", 4, 7.5, identity="local:model@aaaa").model_identity == (
        "local:model@aaaa")
