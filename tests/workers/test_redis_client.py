"""The worker's Redis client: retries with backoff, bounded socket waits, health checks."""

from __future__ import annotations

import time

import pytest
import redis
from redis.retry import Retry

from tests.support.ports import free_port
from tests.support.redis_db import UNIT_DB, redis_url
from workers.receiver import READ_BLOCK_MS
from workers.redis_client import (
    HEALTH_CHECK_INTERVAL_S,
    RETRIES,
    RETRY_BACKOFF,
    RETRY_ON,
    SOCKET_TIMEOUT_S,
    connect,
)


def test_the_client_retries_with_backoff_and_bounds_its_waits() -> None:
    client = connect(redis_url(UNIT_DB))
    try:
        assert client.ping() is True
        kwargs = client.connection_pool.connection_kwargs
        assert kwargs["retry"] == Retry(RETRY_BACKOFF, RETRIES, supported_errors=RETRY_ON)
        assert set(RETRY_ON) == {redis.ConnectionError, redis.TimeoutError}
        assert kwargs["health_check_interval"] == HEALTH_CHECK_INTERVAL_S
        assert kwargs["socket_timeout"] == SOCKET_TIMEOUT_S > READ_BLOCK_MS / 1000
    finally:
        client.close()


def test_a_server_that_is_down_fails_once_the_retries_are_spent() -> None:
    client = connect(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 5
