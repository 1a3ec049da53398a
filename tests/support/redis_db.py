"""Redis for tests and benchmarks: one private, real ``redis-server`` per run (never a mock).

The server starts on a free loopback port the first time a test asks for a URL and stops when
the process exits, so two runs on one machine never see each other's keys and nothing flushes a
database this run did not create. Test areas keep separate databases on it.
"""

from __future__ import annotations

import atexit
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from olss_cli.dev_redis import start_local_redis
from olss_core.settings import Settings
from tests.support.ports import free_port

UNIT_DB = 14
E2E_DB = 15

_server: tuple[str, subprocess.Popen] | None = None


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


def server_url() -> str:
    """``redis://127.0.0.1:PORT`` of this run's private server (started on first call)."""
    global _server
    if _server is None:
        base = f"redis://127.0.0.1:{free_port()}"
        process = start_local_redis(f"{base}/0", daemonize=False)
        assert process is not None
        atexit.register(_stop, process)
        _server = (base, process)
    return _server[0]


def redis_url(db: int) -> str:
    return f"{server_url()}/{db}"


@contextmanager
def clean_db(db: int) -> Iterator[redis.Redis]:
    """A client on database ``db`` of the private server, empty at the start and at the end."""
    client = redis.Redis.from_url(redis_url(db), decode_responses=True)
    client.flushdb()
    try:
        yield client
    finally:
        client.flushdb()
        client.close()


def unit_settings(**overrides: object) -> Settings:
    """Settings on the unit-test database; ``overrides`` replace single fields."""
    return Settings(**{"redis_url": redis_url(UNIT_DB), **overrides})
