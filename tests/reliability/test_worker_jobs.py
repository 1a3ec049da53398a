"""A real ``olss worker`` (olss-digits) and gateway on the test's own Redis: issue 11's worker
items.

* Item 8: a job running past ``OLSS_JOB_TIMEOUT_S`` fails with an error naming the setting, and
  the worker goes on to the next job; a cancel of a running job takes effect within one step.
* Item 13: a Redis outage in the middle of a job is logged as a Redis error, never as a failed
  job; the job stays pending and succeeds once Redis is back.
* Item 20: one INFO line per finished job (id, model, scheduler, steps, size, batch, timings,
  outcome), never the prompt.

``OLSS_TEST_STEP_DELAY_MS`` slows every denoising step down, so the timings are the test's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from tests.reliability.conftest import RedisServer, client
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.processes import Gateway, Worker, service_env, start_worker

STEP_DELAY_MS = 500
PRIVATE = "zebra-prompt-that-must-not-be-logged"


def ready(http: httpx.Client) -> None:
    """Wait until the gateway sees the worker ready (its fleet view follows heartbeats)."""
    wait_for(lambda: http.get("/readyz").status_code == 200, what="the gateway to be ready")


@pytest.fixture()
def worker(redis_server: RedisServer, tmp_path) -> Iterator[Callable[..., Worker]]:
    """``worker(**settings)``: a started digits worker on the test's Redis."""
    started: list[Worker] = []

    def start(**settings: object) -> Worker:
        env = service_env(redis_server.url(), cache_dir=tmp_path / "cache",
                          test_step_delay_ms=STEP_DELAY_MS, **settings)
        started.append(start_worker(env))
        return started[-1]

    yield start
    for process in started:
        process.stop()


def test_a_job_past_its_deadline_fails_naming_the_setting_and_the_worker_goes_on(
    worker: Callable[..., Worker], gateway: Callable[..., Gateway]
) -> None:
    serving = worker(job_timeout_s=2.5)
    with client(gateway()) as http:
        ready(http)
        late = submit(http, prompt=f"the number 3 {PRIVATE}", steps=8)
        on_time = submit(http, prompt=f"the number 4 {PRIVATE}", steps=4)
        view = wait_status(http, late, "failed", "succeeded", timeout_s=60)
        assert view["status"] == "failed", view
        assert "job timeout" in view["error"] and "OLSS_JOB_TIMEOUT_S=2.5 s" in view["error"]
        assert view["progress"]["step"] < 8
        assert wait_status(http, on_time, "succeeded", "failed")["status"] == "succeeded"
    log = serving.log()
    assert f"job {late} timed_out:" in log
    (line,) = [line for line in log.splitlines() if f"job {on_time} succeeded:" in line]
    for part in ("model=olss-digits", "scheduler=olss", "steps=4", "size=16x16",
                 "batch_images=1", "inference_s=", "total_s="):
        assert part in line, (part, line)
    assert PRIVATE not in log


def test_a_cancel_of_a_running_job_takes_effect_within_one_step(
    worker: Callable[..., Worker], gateway: Callable[..., Gateway]
) -> None:
    serving = worker()
    with client(gateway()) as http:
        ready(http)
        job_id = submit(http, prompt="the number 5", steps=8)
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 1,
                 what="the job to make progress")
        asked = time.monotonic()
        assert http.delete(f"/jobs/{job_id}").status_code == 202
        view = wait_status(http, job_id, "canceled", timeout_s=30)
        took = time.monotonic() - asked
    print(f"\ncanceled {took:.2f} s after the request, at step {view['progress']['step']} "
          f"(one step: {STEP_DELAY_MS} ms)")
    assert took < 2 * STEP_DELAY_MS / 1000 + 1.0  # one step, plus polling and a loaded CPU
    assert view["progress"]["step"] < 8
    assert f"job {job_id} canceled:" in serving.log()


def test_a_redis_outage_mid_job_is_no_failed_job_and_the_job_succeeds_after_it(
    redis_server: RedisServer, worker: Callable[..., Worker], gateway: Callable[..., Gateway]
) -> None:
    serving, server = worker(lease_ms=1000), gateway()
    with client(server) as http:
        ready(http)
        job_id = submit(http, prompt="the number 6", steps=8)
        wait_for(lambda: http.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 1,
                 what="the job to make progress")
        redis_server.stop()  # saves its data (RDB) first: the job and its pending entry survive
        time.sleep(3)
        redis_server.start()
        view = wait_status(http, job_id, "succeeded", "failed", timeout_s=90)
    log = serving.log()
    assert view["status"] == "succeeded", (view, log[-3000:])
    assert "redis error" in log
    assert f"job {job_id} failed" not in log and "Traceback" not in log, log[-3000:]
    assert f"job {job_id} succeeded:" in log
