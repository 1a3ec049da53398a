"""A dedicated Redis database per test area, flushed around each use (never a mock)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import redis

from olss_core.settings import Settings

REDIS_BASE = "redis://127.0.0.1:6379"
UNIT_DB = 14
E2E_DB = 15


def redis_url(db: int) -> str:
    return f"{REDIS_BASE}/{db}"


@contextmanager
def clean_db(db: int) -> Iterator[redis.Redis]:
    """A client on database ``db``, empty at the start and flushed again at the end."""
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
