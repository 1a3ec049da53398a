"""Start-up on the tiny pipeline: with CUDA graphs (their CPU fallback here) batches are padded to
the buckets, warm-up makes every bucket's graphs and then no more; compile caches go to the
cache volume; a compile mode that captures graphs of its own refuses the worker's graphs."""

from __future__ import annotations

from pathlib import Path

import pytest
from torch._inductor.runtime.cache_dir_utils import cache_dir

from olss_core.settings import ConfigError
from schedules import ScheduleRegistry, model_key
from tests.support.queued_jobs import job_spec
from tests.support.redis_db import unit_settings
from tests.support.schedules import build_schedule
from tests.support.torch_threads import single_torch_thread
from workers.startup import COMPILE_CACHE_FOLDER, load_model
from workers.warm_up import warm_up


@pytest.fixture()
def schedule_dir(tiny_pipeline_dir: Path, tmp_path: Path) -> Path:
    registry = ScheduleRegistry(tmp_path / "schedules")
    registry.put(build_schedule(3, model=model_key(tiny_pipeline_dir)))
    return registry.writable_root


def test_with_graphs_warm_up_makes_each_buckets_graphs_and_then_no_more(
    tiny_pipeline_dir: Path, schedule_dir: Path, tmp_path: Path
) -> None:
    settings = unit_settings(
        device="cpu", cuda_graphs="step", max_batch_size=4, schedule_dir=schedule_dir,
        cache_dir=tmp_path / "cache",
    )
    with single_torch_thread():
        loaded = load_model(settings, str(tiny_pipeline_dir))
        assert loaded.warm_batch_sizes == (1, 2, 4)
        engine = loaded.engine
        warm_up(engine, loaded.key, engine.bank.schedules, loaded.warm_batch_sizes)
        loaded.finish_warm_up()
        graphs = engine.inference.graphs
        kinds = sorted(key[0] for key in graphs.keys)
        assert kinds == ["decode"] * 3 + ["encode"] * 3 + ["loop"] * 3
        (schedule,) = engine.bank.schedules
        job = job_spec(model=loaded.key, steps=schedule.steps, num_images=3)
        assert len(engine.generate([job]).output.images[0]) == 3  # padded to 4, runs graphed
        assert len(graphs.keys) == 9


def test_without_fixed_shapes_nothing_is_padded_and_warm_up_runs_batch_1(
    tiny_pipeline_dir: Path, schedule_dir: Path, tmp_path: Path
) -> None:
    settings = unit_settings(device="cpu", schedule_dir=schedule_dir, cache_dir=tmp_path)
    loaded = load_model(settings, str(tiny_pipeline_dir))
    assert loaded.warm_batch_sizes == (1,)
    assert loaded.engine.inference.buckets is None and loaded.engine.inference.graphs is None


def test_compiled_workers_keep_their_compile_cache_on_the_cache_volume(
    tiny_pipeline_dir: Path, schedule_dir: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))  # restored after
    settings = unit_settings(device="cpu", compile=True, schedule_dir=schedule_dir,
                             cache_dir=tmp_path / "volume")
    loaded = load_model(settings, str(tiny_pipeline_dir))  # compiles lazily: nothing runs yet
    assert loaded.options.compile and loaded.warm_batch_sizes == (1, 2, 4, 8)
    assert cache_dir() == str(tmp_path / "volume" / COMPILE_CACHE_FOLDER)


def test_a_compile_mode_with_graphs_of_its_own_and_cuda_graphs_stop_start_up(
    tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    settings = unit_settings(device="cpu", compile=True, compile_mode="reduce-overhead",
                             cuda_graphs="step", cache_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"OLSS_CUDA_GRAPHS.*captures its own CUDA graphs"):
        load_model(settings, str(tiny_pipeline_dir))
