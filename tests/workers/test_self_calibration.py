"""Start-up self-calibration on the tiny pipeline and a real Redis: the lock, waiting for the
replica that calibrates, progress, the fallback sampler, /readyz and the metrics port."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import redis
from prometheus_client import CollectorRegistry

from olss_core.keys import calibration_lock_key
from olss_core.protocol import CalibrationProgress, WorkerState
from olss_core.samplers import FALLBACK_SAMPLER, OLSS
from olss_core.settings import ConfigError, Settings
from schedules import ScheduleRegistry
from schedules.model_identity import model_identity
from tests.support.redis_db import unit_settings
from tests.support.torch_threads import single_torch_thread
from workers.calibration_lock import CalibrationLock
from workers.metrics_server import MetricsServer
from workers.schedulers import SchedulerBank, load_model_schedules
from workers.self_calibration import (
    ModelToCalibrate,
    SelfCalibration,
    calibration_config,
    missing_steps,
)

KEY = "tiny-sd"
TINY_KNOBS = dict(
    calibrate_steps=[3, 4], calibrate_guidance=[7.5], calibrate_prompts=5,
    calibrate_validation=1, calibrate_teacher="ddim:8", calibrate_max_evaluations=60,
)


def tiny_settings(tmp_path: Path, **overrides: object) -> Settings:
    return unit_settings(schedule_dir=tmp_path / "schedules", cache_dir=tmp_path / "cache",
                         **{**TINY_KNOBS, **overrides})


def model(pipe, tiny_pipeline_dir: Path) -> ModelToCalibrate:
    return ModelToCalibrate(pipe, str(tiny_pipeline_dir), KEY, model_identity(tiny_pipeline_dir),
                            7.5)


def registry_of(settings: Settings) -> ScheduleRegistry:
    return ScheduleRegistry.default(settings.writable_schedule_dir)


def test_an_empty_registry_is_calibrated_once_with_progress_and_the_identity(
    db: redis.Redis, tiny_pipeline, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(tmp_path)
    shown: list[CalibrationProgress] = []
    calibration = SelfCalibration(settings, db, "worker-a", shown.append)
    target, registry = model(tiny_pipeline, tiny_pipeline_dir), registry_of(settings)
    with single_torch_thread():
        assert calibration.ensure(target, registry) is None
    written = sorted(p.name for p in settings.writable_schedule_dir.glob("*.json"))
    assert len(written) == 2 and all(name.startswith("tiny-sd-") for name in written)
    schedules = load_model_schedules(registry, KEY, target.identity)
    assert [(s.num_steps, s.model_identity) for s in schedules] == [
        (3, target.identity), (4, target.identity)]
    phases = [p.phase for p in shown]
    assert phases[0] == "teacher" and phases[-1] == "writing" and "search" in phases
    fractions = [p.fraction for p in shown]
    assert fractions == sorted(fractions) and 0 < fractions[-1] < 1
    assert all(p.holder == "worker-a" and p.steps == [3, 4] for p in shown)
    assert db.get(calibration_lock_key(KEY, target.identity)) is None  # released
    shown.clear()
    assert calibration.ensure(target, registry) is None  # the next start preloads them
    assert shown == []


def test_the_calibration_batch_size_is_a_setting(tmp_path: Path) -> None:
    config, _ = calibration_config(tiny_settings(tmp_path), [4], 7.5)
    assert config.batch_size is None  # calibrate() sizes it to the image
    config, _ = calibration_config(tiny_settings(tmp_path, calibrate_batch_size=3), [4], 7.5)
    assert config.batch_size == 3


def test_off_or_failing_calibration_says_why(
    db: redis.Redis, tiny_pipeline, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    target = model(tiny_pipeline, tiny_pipeline_dir)
    off = tiny_settings(tmp_path, auto_calibrate=False)
    reason = SelfCalibration(off, db, "w", lambda _: None).ensure(target, registry_of(off))
    assert reason is not None and "OLSS_AUTO_CALIBRATE is off" in reason and "3, 4" in reason
    # three guidance scales cannot share out one calibration prompt: calibrate() refuses
    failing = tiny_settings(tmp_path, calibrate_prompts=2, calibrate_guidance=[2, 4, 7.5])
    reason = SelfCalibration(failing, db, "w", lambda _: None).ensure(target,
                                                                       registry_of(failing))
    assert reason is not None and reason.startswith("calibration failed: ValueError")
    assert db.get(calibration_lock_key(KEY, target.identity)) is None


def test_a_waiter_shows_the_holder_and_loads_what_it_wrote(
    db: redis.Redis, tiny_pipeline, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    settings = tiny_settings(tmp_path, calibrate_lock_ttl_s=5)
    target, registry = model(tiny_pipeline, tiny_pipeline_dir), registry_of(settings)
    source = tiny_settings(tmp_path / "elsewhere")  # the holder calibrates into its folder...
    with single_torch_thread():
        SelfCalibration(source, db, "worker-h", lambda _: None)._calibrate(
            target, registry_of(source), [3, 4])
    holder = CalibrationLock(db, calibration_lock_key(KEY, target.identity), "worker-h", 5)
    assert holder.acquire()

    def finish() -> None:  # ... and "writes it to the shared volume", then releases
        time.sleep(1.0)
        for path in source.writable_schedule_dir.glob("*.json"):
            (settings.writable_schedule_dir / path.name).write_bytes(path.read_bytes())
        holder.release()

    settings.writable_schedule_dir.mkdir(parents=True)
    shown: list[CalibrationProgress] = []
    threading.Thread(target=finish).start()
    waiter = SelfCalibration(settings, db, "worker-w", shown.append, poll_s=0.1)
    assert waiter.ensure(target, registry) is None
    assert shown and {(p.phase, p.holder) for p in shown} == {("waiting", "worker-h")}
    assert missing_steps(registry, KEY, target.identity, [3, 4], 7.5) == []


def test_the_lock_expires_unless_renewed_and_only_its_holder_releases_it(
    db: redis.Redis,
) -> None:
    key = calibration_lock_key(KEY, "local:tiny-sd@x")
    first = CalibrationLock(db, key, "a", ttl_s=0.3)
    second = CalibrationLock(db, key, "b", ttl_s=0.3)
    assert first.acquire() and not second.acquire()
    assert second.holder() == "a"
    with first.held():  # renewed in the background past several TTLs
        time.sleep(1.0)
        assert not second.acquire()
        second.release()  # not the holder: nothing happens
        assert first.holder() == "a"
    assert first.holder() is None  # released at the end of the block
    assert first.acquire()
    time.sleep(0.5)  # its holder "died": nobody renews
    assert second.acquire() and second.holder() == "b"


def test_the_fallback_sampler_serves_olss_without_a_schedule(tiny_pipeline) -> None:
    bank = SchedulerBank(tiny_pipeline.scheduler.config, [], fallback=FALLBACK_SAMPLER)
    label, scheduler = bank.get(OLSS, 7, 7.5)
    assert label.startswith(f"{FALLBACK_SAMPLER} (OLSS fallback")
    assert scheduler is bank.get(FALLBACK_SAMPLER, 7, 7.5)[1]
    with pytest.raises(LookupError):
        SchedulerBank(tiny_pipeline.scheduler.config, []).get(OLSS, 7, 7.5)


def test_readyz_says_calibrating_with_progress_and_retry_after() -> None:
    progress = CalibrationProgress(phase="search", fraction=0.5, eta_s=12.2, steps=[4, 5])
    states = iter([WorkerState.CALIBRATING, WorkerState.READY])
    server = MetricsServer.start(CollectorRegistry(), "127.0.0.1", 0, lambda: next(states),
                                 lambda: progress)
    try:
        calibrating = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
        ready = httpx.get(f"http://127.0.0.1:{server.port}/readyz")
    finally:
        server.stop()
    assert calibrating.status_code == 503
    assert calibrating.headers["retry-after"] == "13"
    assert calibrating.json() == {"status": "calibrating", "progress": json.loads(
        progress.model_dump_json())}
    assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


def test_a_busy_metrics_port_names_the_setting() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError, match="OLSS_WORKER_METRICS_PORT"):
            MetricsServer.start(CollectorRegistry(), "127.0.0.1", port,
                                lambda: WorkerState.LOADING)
