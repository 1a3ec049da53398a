"""Redis clients of every process, with one retry, timeout and health-check policy.

Each command is retried on connection errors and timeouts with exponential backoff (redis-py's
``Retry``): a pooled connection that went stale when the server restarted fails its first use,
is reconnected and the command runs again, so a restart or a failover costs a retry, not a
failed request. Sockets time out, so a dead server is noticed; a connection idle longer than
``HEALTH_CHECK_INTERVAL_S`` is PINGed before it is used again.

The gateway's asynchronous clients take their connections from a bounded, blocking pool: past
``max_connections`` a command waits up to ``pool_timeout_s`` for a connection to come free
instead of failing at once (redis-py's default pool raises "Too many connections").
"""

from __future__ import annotations

import redis
import redis.asyncio
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

RETRIES = 3
RETRY_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
RETRY_ON = (redis.ConnectionError, redis.TimeoutError)
SOCKET_TIMEOUT_S = 5.0
"""Above the longest blocking read of any process (``workers.receiver.READ_BLOCK_MS``,
``app.event_hub.READ_BLOCK_MS``)."""
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 10


def sync_client(url: str, decode_responses: bool = True) -> redis.Redis:
    """A client for ``url`` with the retry and timeout policy above (the worker's kind)."""
    return redis.Redis.from_url(
        url,
        decode_responses=decode_responses,
        retry=Retry(RETRY_BACKOFF, RETRIES, supported_errors=RETRY_ON),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )


def async_client(
    url: str, max_connections: int, pool_timeout_s: float, decode_responses: bool = True
) -> redis.asyncio.Redis:
    """An asyncio client on a blocking pool of at most ``max_connections`` connections."""
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_timeout_s,
        decode_responses=decode_responses,
        retry=AsyncRetry(RETRY_BACKOFF, RETRIES, supported_errors=RETRY_ON),
        socket_timeout=SOCKET_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        health_check_interval=HEALTH_CHECK_INTERVAL_S,
    )
    return redis.asyncio.Redis.from_pool(pool)
