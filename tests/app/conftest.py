"""Gateway tests: the FastAPI app in-process against a real Redis (database 14).

``registered_worker`` publishes a real heartbeat for a worker that never consumes, so jobs stay
queued: queue depth, cancel-before-start and idempotency are then deterministic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from olss_core.protocol import ScheduleInfo, WorkerInfo, now
from tests.support.redis_db import unit_settings
from workers.heartbeat import Heartbeat

MODEL = "tiny-sd"
SCHEDULES = [
    ScheduleInfo(name=f"{MODEL}__{steps}steps__cfg7.5__paper", steps=steps, guidance_scale=7.5)
    for steps in (4, 5)
]


@pytest.fixture()
def make_client(db: redis.Redis) -> Iterator[Callable[..., TestClient]]:
    """``make_client(**settings)``: a started TestClient for a gateway with those settings."""
    clients: list[TestClient] = []

    def make(**overrides: object) -> TestClient:
        client = TestClient(create_app(unit_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture()
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture()
def registered_worker(db: redis.Redis) -> WorkerInfo:
    """A heartbeat for a ``tiny-sd`` worker with 4- and 5-step schedules (it runs nothing)."""
    info = WorkerInfo(
        worker_id="idle-worker", model="tiny-sd", model_key=MODEL, device="cpu",
        schedules=SCHEDULES, default_schedule=SCHEDULES[1].name, default_steps=25,
        default_guidance_scale=7.5,
        schedulers=["olss", "dpmsolver++", "unipc", "ddim", "euler"], width=32, height=32,
        max_batch_size=8, metrics_port=0, pid=0, host="test", started_at=now(), version="test",
    )
    Heartbeat(db, info, ttl_s=60, period_s=60, on_beat=lambda: None).beat()
    return info
