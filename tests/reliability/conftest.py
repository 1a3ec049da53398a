"""Reliability fixtures: a dedicated real ``redis-server`` per test (it can be restarted), real
``olss gateway`` processes with the settings a test names, and heartbeat-only workers.

A heartbeat-only worker (``idle_worker``) publishes a real ``WorkerInfo`` from a thread and never
consumes, so jobs stay queued for as long as a test needs: queue depth, streams and cancels are
then deterministic. Tests that need images start a real ``olss worker`` (olss-digits).
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from olss_cli.dev_redis import redis_answers
from olss_core.protocol import ScheduleInfo, WorkerInfo, now
from olss_core.redis_clients import sync_client
from olss_core.settings import Settings
from tests.support.ports import free_port
from tests.support.processes import Gateway, service_env, start_gateway
from tests.support.schedules import shipped_name
from workers.heartbeat import Heartbeat

MODEL = "olss-digits"
DIGITS_SCHEDULES = [
    ScheduleInfo(name=shipped_name(MODEL, steps, 4.0), steps=steps, guidance_scale=4)
    for steps in (4, 5)
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.reliability)


@dataclass
class RedisServer:
    """A ``redis-server`` of one test, with RDB persistence so a restart keeps its data."""

    directory: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "3600 1",
             "--appendonly", "no", "--dir", str(self.directory), "--maxclients", "10000"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while not redis_answers(self.url()):
            assert time.monotonic() < deadline, "redis-server did not answer within 10 s"
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """SIGTERM: the server saves its data (``--save``) and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=20)

    def restart(self) -> float:
        """Stop and start again on the same port; seconds the server was unreachable."""
        started = time.monotonic()
        self.stop()
        self.start()
        return time.monotonic() - started


@pytest.fixture()
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def digits_info(worker_id: str = "idle-digits", **changes: object) -> WorkerInfo:
    """The heartbeat of an olss-digits worker (16x16, OLSS 4 and 5 steps at guidance 4)."""
    info = WorkerInfo(
        worker_id=worker_id, model=MODEL, model_key=MODEL, device="cpu",
        schedules=DIGITS_SCHEDULES, default_schedule=DIGITS_SCHEDULES[1].name, default_steps=25,
        default_guidance_scale=4.0, schedulers=["olss", "dpmsolver++", "unipc", "ddim", "euler"],
        width=16, height=16, max_batch_size=8, metrics_port=0, pid=0, host="reliability",
        started_at=now(), version="test",
    )
    return info.model_copy(update=changes)


@pytest.fixture()
def idle_worker(redis_server: RedisServer) -> Iterator[Callable[..., WorkerInfo]]:
    """``idle_worker(**changes)``: a heartbeat-only digits worker beating every second."""
    beats: list[Heartbeat] = []

    def start(**changes: object) -> WorkerInfo:
        info = digits_info(f"idle-{len(beats)}", **changes)
        heartbeat = Heartbeat(sync_client(redis_server.url()), info, ttl_s=5, period_s=1,
                              on_beat=lambda: None)
        heartbeat.start()
        beats.append(heartbeat)
        return info

    yield start
    for heartbeat in beats:
        heartbeat.stop()


@pytest.fixture()
def gateway(redis_server: RedisServer) -> Iterator[Callable[..., Gateway]]:
    """``gateway(**settings)``: a started ``olss gateway`` on the test's Redis."""
    started: list[Gateway] = []

    def start(**settings: object) -> Gateway:
        started.append(start_gateway(service_env(redis_server.url(), **settings)))
        return started[-1]

    yield start
    for process in started:
        process.stop()


KEEPALIVE_EXPIRY_S = Settings.model_fields["keep_alive_s"].default / 2
"""The test clients drop an idle connection after this, well before the gateway closes it: with
httpx's default (5 s, the gateway's own keep-alive) a request sent on a connection the gateway
is closing at that moment fails with ``ReadError``, a client race, not a gateway error."""


def client(gateway: Gateway, **options: object) -> httpx.Client:
    options.setdefault("limits", httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S))
    return httpx.Client(base_url=gateway.url, timeout=30, **options)


def async_client(gateway: Gateway, connections: int = 100) -> httpx.AsyncClient:
    limits = httpx.Limits(
        max_connections=connections,
        max_keepalive_connections=connections,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )
    return httpx.AsyncClient(base_url=gateway.url, timeout=60, limits=limits)
