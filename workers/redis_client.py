"""The worker's Redis client, and how long its serving loop waits after a Redis error.

Each command is retried on connection errors and timeouts with exponential backoff (redis-py's
``Retry``), so a blip or a failover costs a retry, not a failed batch. Sockets time out, so a
dead server is noticed, and idle connections are checked before reuse. Past the retries the
error reaches the serving loop, which waits ``OUTAGE_BACKOFF.compute(n)`` after the n-th error in
a row: a long outage is waited out without spinning.
"""

from __future__ import annotations

import redis
from redis.backoff import EqualJitterBackoff, ExponentialWithJitterBackoff
from redis.retry import Retry

RETRIES = 3
RETRY_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
RETRY_ON = (redis.ConnectionError, redis.TimeoutError)
SOCKET_TIMEOUT_S = 5.0
"""Above the serving loop's longest blocking read (``receiver.READ_BLOCK_MS``)."""
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 10

OUTAGE_BACKOFF = EqualJitterBackoff(base=0.5, cap=15.0)
"""0.5-1 s after the first error in a row, twice that after the second, ... up to 7.5-15 s."""


def connect(url: str) -> redis.Redis:
    """A client for ``url`` (strings decoded) with the retry and timeout policy above."""
    return redis.Redis.from_url(
        url,
        decode_responses=True,
        retry=Retry(RETRY_BACKOFF, RETRIES, supported_errors=RETRY_ON),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )
