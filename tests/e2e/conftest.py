"""End-to-end fixtures: real ``olss gateway`` and ``olss worker`` processes on Redis db 15.

One stack (a gateway and a worker for the tiny pipeline, with OLSS schedules calibrated for
it at session start) serves every e2e module; the crash tests add a worker and may kill the
stack's (it runs last; a later test would get a new one).
Test-only settings the stack uses, all documented in ``olss_core.settings``: a per-step delay (so
a running job can be canceled or its worker killed mid-job) and a prompt marker that makes the
worker fail a job (to exercise retries and the dead-letter stream).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import E2E_DB, clean_db, redis_url
from tests.support.schedules import calibrate_test_schedules

pytestmark = pytest.mark.e2e

FAIL_MARKER = "[[fail]]"
STACK_SETTINGS = {
    "lease_ms": 1500,
    "max_attempts": 2,
    "max_batch_wait_ms": 50,
    "heartbeat_ttl_s": 3,
    "test_step_delay_ms": 20,
    "test_fail_prompt": FAIL_MARKER,
}


@dataclass
class Stack:
    gateway: Gateway
    worker: Worker
    env: dict[str, str]
    db: redis.Redis
    http: httpx.Client


@pytest.fixture(scope="session")
def schedule_dir(tiny_pipeline_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OLSS schedules (4 and 5 steps, guidance 7.5) fitted for the tiny pipeline."""
    out = tmp_path_factory.mktemp("schedules")
    calibrate_test_schedules(tiny_pipeline_dir, out)
    return out


@pytest.fixture(scope="session")
def session_stack(
    tiny_pipeline_dir: Path, schedule_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """A gateway and one worker (started in parallel), shared by the e2e modules."""
    with clean_db(E2E_DB) as db:
        env = service_env(
            redis_url(E2E_DB), schedule_dir=schedule_dir, model=tiny_pipeline_dir,
            cache_dir=tmp_path_factory.mktemp("cache"), **STACK_SETTINGS,
        )
        stack = Stack(spawn_gateway(env), spawn_worker(env), env, db, httpx.Client(timeout=60))
        try:
            stack.worker.wait_ready()
            stack.gateway.wait_ready()
            stack.http.base_url = httpx.URL(stack.gateway.url)
            yield stack
        finally:
            stack.http.close()
            stack.gateway.stop()
            stack.worker.stop()


@pytest.fixture()
def stack(session_stack: Stack) -> Stack:
    """The shared stack with a live worker (a new one if a crash test killed it)."""
    if not session_stack.worker.alive():
        session_stack.worker = spawn_worker(session_stack.env).wait_ready()
    return session_stack
