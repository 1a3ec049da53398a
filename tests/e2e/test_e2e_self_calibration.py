"""Self-calibrating workers end to end: real gateway and worker processes, the tiny pipeline, an
empty schedule folder, real Redis (issue 9, part 1).

- a worker calibrates before it is ready; meanwhile a request is a 503 with ``Retry-After``,
  ``/readyz`` and ``/v1/info`` say calibrating with progress; then a prompt-only OLSS request
  is served with the new schedule;
- of two workers, one calibrates; SIGKILL of it mid-way lets the other take over, and a worker
  started afterwards preloads the same schedules;
- with ``OLSS_AUTO_CALIBRATE=0`` the fallback sampler serves a prompt-only OLSS request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from olss_core.keys import calibration_lock_key
from olss_core.protocol import WorkerState
from olss_core.samplers import FALLBACK_SAMPLER
from schedules.model_identity import model_identity
from schedules.registry import model_key
from tests.support.processes import Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url

pytestmark = pytest.mark.e2e

CALIBRATION_DB = 5
TINY_CALIBRATION = {
    "auto_calibrate": 1, "calibrate_steps": "3,4", "calibrate_guidance": "7.5",
    "calibrate_prompts": 6, "calibrate_validation": 1, "calibrate_teacher": "ddim:20",
    "calibrate_max_evaluations": 120, "calibrate_lock_ttl_s": 2, "heartbeat_ttl_s": 3,
    "sync_timeout_s": 60,
}
TIMEOUT_S = 240.0


@pytest.fixture()
def db() -> Iterator[redis.Redis]:
    with clean_db(CALIBRATION_DB) as client:
        yield client


def env_for(tmp_path: Path, model: Path, **settings: object) -> dict[str, str]:
    return service_env(redis_url(CALIBRATION_DB), schedule_dir=tmp_path / "schedules",
                       model=model, cache_dir=tmp_path / "cache", **settings)


def wait_until(condition, what: str, workers: list[Worker], timeout_s: float = TIMEOUT_S):
    """Poll ``condition`` until it returns something true; fail early if a worker exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        for worker in workers:
            assert worker.alive() or worker.process.returncode == -9, worker.log()[-3000:]
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_worker_calibrates_an_empty_registry_then_serves_a_prompt_only_request(
    db: redis.Redis, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    env = env_for(tmp_path, tiny_pipeline_dir, **TINY_CALIBRATION)
    gateway, worker = spawn_gateway(env), spawn_worker(env)
    try:
        gateway.wait_ready()
        http = httpx.Client(base_url=gateway.url, timeout=90)
        info = wait_until(lambda: (i := worker.heartbeat()) and i.state is WorkerState.CALIBRATING
                          and i.calibration and i.calibration.phase != "waiting" and i,
                          "state calibrating", [worker])
        refused = http.post("/generate", json={"prompt": "a cat"})
        readyz = httpx.get(f"http://127.0.0.1:{info.metrics_port}/readyz")
        shown = http.get("/v1/info").json()
        assert refused.status_code == 503, refused.text
        assert refused.json()["error_type"] == "calibrating"
        assert "calibrating" in refused.json()["error"]
        assert 1 <= int(refused.headers["retry-after"]) <= 60
        assert readyz.status_code == 503 and "retry-after" in readyz.headers
        assert readyz.json()["status"] == "calibrating"
        assert readyz.json()["progress"]["steps"] == [3, 4]
        assert [m["key"] for m in shown["calibrating"]] == [model_key(tiny_pipeline_dir)]
        assert shown["calibrating"][0]["progress"]["holder"] == worker.worker_id

        worker.wait_ready(TIMEOUT_S)
        served = http.post("/generate", json={"prompt": "a cat"},
                           headers={"Accept": "image/png"})
        assert served.status_code == 200, served.text
        identity = model_identity(tiny_pipeline_dir)
        files = sorted((tmp_path / "schedules").glob("*.json"))
        assert len(files) == 2
        assert {json.loads(f.read_text())["model_identity"] for f in files} == {identity}
        assert served.headers["x-schedule"] in {f.stem for f in files}
        assert "calibrated 2 schedules" in worker.log()
        assert "calibrating steps [3, 4]: teacher 0%" in worker.log()  # progress at INFO
    finally:
        gateway.stop()
        worker.stop()


def test_of_two_workers_one_calibrates_and_the_other_takes_over_when_it_is_killed(
    db: redis.Redis, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    env = env_for(tmp_path, tiny_pipeline_dir, **TINY_CALIBRATION)
    workers = [spawn_worker(env), spawn_worker(env)]
    later: Worker | None = None
    lock = calibration_lock_key(model_key(tiny_pipeline_dir), model_identity(tiny_pipeline_dir))
    try:
        holder_id = wait_until(lambda: (v := db.get(lock)) and v.split()[0], "a lock holder",
                               workers)
        holder = next(w for w in workers if w.worker_id == holder_id)
        waiter = next(w for w in workers if w is not holder)
        wait_until(lambda: (i := holder.heartbeat()) and i.calibration
                   and i.calibration.fraction > 0.05, "the holder mid-way", workers)
        seen = wait_until(lambda: (i := waiter.heartbeat()) and i.calibration
                          and i.calibration.phase == "waiting" and i.calibration,
                          "the waiter waiting", workers)
        assert seen.holder == holder_id
        holder.kill()  # SIGKILL mid-calibration: its lock expires after the TTL
        assert not list((tmp_path / "schedules").glob("*.json"))
        waiter.wait_ready(TIMEOUT_S)
        assert "calibrated 2 schedules" in waiter.log()
        later = spawn_worker(env).wait_ready(TIMEOUT_S)  # the next start preloads them
        assert "calibrating" not in later.log()
        names = [s.name for s in waiter.info.schedules]
        assert len(names) == 2 and [s.name for s in later.info.schedules] == names
    finally:
        for worker in [*workers, *([later] if later else [])]:
            worker.stop()


def test_without_auto_calibration_the_fallback_sampler_serves_olss_requests(
    db: redis.Redis, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    env = env_for(tmp_path, tiny_pipeline_dir, auto_calibrate=0, sync_timeout_s=60)
    gateway, worker = spawn_gateway(env), spawn_worker(env)
    try:
        gateway.wait_ready()
        worker.wait_ready()
        http = httpx.Client(base_url=gateway.url, timeout=90)
        served = http.post("/generate", json={"prompt": "a cat", "steps": 3},
                           headers={"Accept": "image/png"})
        prompt_only = http.post("/generate", json={"prompt": "a cat"},
                                headers={"Accept": "image/png"})
        model = http.get("/v1/info").json()["models"][0]
        assert served.status_code == 200, served.text
        assert prompt_only.status_code == 200, prompt_only.text
        assert served.headers["x-schedule"].startswith(f"{FALLBACK_SAMPLER} (OLSS fallback")
        assert prompt_only.headers["x-schedule"].startswith(FALLBACK_SAMPLER)
        assert model["olss_fallback"] == FALLBACK_SAMPLER
        assert "OLSS_AUTO_CALIBRATE is off" in model["olss_fallback_reason"]
        assert worker.log().count("OLSS requests without a schedule get") == 1
        assert worker.info.max_width == 64 and worker.info.max_height == 64  # 2 x 32 native
    finally:
        gateway.stop()
        worker.stop()
