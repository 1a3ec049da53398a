"""Redis clients of every process, with one retry, timeout and health-check policy, for each
topology the service runs on: one server, a Redis Cluster, or a primary watched by Sentinels.

Each command is retried on connection errors and timeouts with exponential backoff (redis-py's
``Retry``): a pooled connection that went stale when the server restarted fails its first use,
is reconnected and the command runs again, so a restart or a failover costs a retry, not a
failed request. Sockets time out, so a dead server is noticed; a connection idle longer than
``HEALTH_CHECK_INTERVAL_S`` is PINGed before it is used again.

Where Redis is comes from the settings (``RedisTarget.of``):

- one server: ``OLSS_REDIS_URL``;
- a Redis Cluster (``OLSS_REDIS_CLUSTER``): ``OLSS_REDIS_URL`` names any node, redis-py's
  ``RedisCluster`` finds the others and follows ``MOVED``/``ASK`` redirections. Every key one
  Lua script or MULTI touches shares a hash slot (``olss_core.keys``);
- Sentinels (``OLSS_REDIS_SENTINELS``, ``OLSS_REDIS_SENTINEL_MASTER``): the clients ask them for
  the primary and reconnect to the new one after a failover; ``OLSS_REDIS_URL`` still gives the
  database, user, password and TLS.

The gateway's asynchronous clients take their connections from a bounded, blocking pool: past
``max_connections`` a command waits up to ``pool_timeout_s`` for a connection to come free
instead of failing at once (redis-py's default pool raises "Too many connections"). A cluster
client keeps ``max_connections`` per node, and redis-py's cluster pool does not block: past it a
command fails (503) instead of waiting.

What redis-py's cluster clients do not do, and how the service does without it: a cluster
pipeline refuses ``PUBLISH`` and ``EVALSHA`` (scripts are called on their own, finish notices
are published after the MULTI that stores the outcome), and pub/sub routes by the channel's slot,
so ``pubsub`` subscribes on a plain connection to one primary (``PUBLISH`` on a cluster reaches
the subscribers of every node).
"""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio
import redis.asyncio.sentinel
import redis.sentinel
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialWithJitterBackoff
from redis.retry import Retry

from olss_core.settings import Settings

RETRIES = 3
RETRY_BACKOFF = ExponentialWithJitterBackoff(base=0.05, cap=1.0)
RETRY_ON = (redis.ConnectionError, redis.TimeoutError)
SOCKET_TIMEOUT_S = 5.0
"""Above the longest blocking read of any process (``workers.receiver.READ_BLOCK_MS``,
``app.event_hub.READ_BLOCK_MS``)."""
CONNECT_TIMEOUT_S = 2.0
HEALTH_CHECK_INTERVAL_S = 10

SyncRedis = redis.Redis | redis.RedisCluster
AsyncRedis = redis.asyncio.Redis | redis.asyncio.RedisCluster


@dataclass(frozen=True)
class RedisTarget:
    """Where Redis is: ``url`` alone (one server), ``url`` naming a node of a Redis Cluster
    (``cluster``), or the primary the ``sentinels`` know as ``sentinel_master``."""

    url: str
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None

    @classmethod
    def of(cls, settings: Settings) -> RedisTarget:
        sentinels = tuple(
            (host, int(port))
            for host, _, port in (address.rpartition(":") for address in settings.redis_sentinels)
        )
        return cls(settings.redis_url, settings.redis_cluster, sentinels,
                   settings.redis_sentinel_master)

    @property
    def kind(self) -> str:
        """``cluster``, ``sentinel`` or ``standalone``."""
        if self.cluster:
            return "cluster"
        return "sentinel" if self.sentinels else "standalone"


def _policy(retry: Retry | AsyncRetry, decode_responses: bool) -> dict[str, Any]:
    return {
        "decode_responses": decode_responses,
        "retry": retry,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "health_check_interval": HEALTH_CHECK_INTERVAL_S,
    }


def _primary_kwargs(url: str) -> dict[str, Any]:
    """Database, credentials and TLS of ``url`` for a Sentinel's primary (its host is theirs)."""
    kwargs = redis.connection.parse_url(url)
    for name in ("host", "port", "path"):
        kwargs.pop(name, None)
    if kwargs.pop("connection_class", None) is redis.SSLConnection:
        kwargs["ssl"] = True
    return kwargs


def _as_target(where: RedisTarget | str) -> RedisTarget:
    return where if isinstance(where, RedisTarget) else RedisTarget(where)


def sync_client(where: RedisTarget | str, decode_responses: bool = True) -> SyncRedis:
    """A client for ``where`` with the retry and timeout policy above (the worker's kind)."""
    target = _as_target(where)
    policy = _policy(Retry(RETRY_BACKOFF, RETRIES, supported_errors=RETRY_ON), decode_responses)
    if target.cluster:
        return redis.RedisCluster.from_url(target.url, **policy)
    if target.sentinels:
        sentinel = redis.sentinel.Sentinel(
            list(target.sentinels), socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        assert target.sentinel_master is not None
        return sentinel.master_for(
            target.sentinel_master, **_primary_kwargs(target.url), **policy
        )
    return redis.Redis.from_url(target.url, **policy)


class _BlockingSentinelPool(
    redis.asyncio.sentinel.SentinelConnectionPool, redis.asyncio.BlockingConnectionPool
):
    """redis-py's Sentinel pool (it asks the Sentinels for the primary) with the waiting of its
    blocking pool (``timeout``: how long a command waits for a free connection)."""


def async_client(
    where: RedisTarget | str, max_connections: int, pool_timeout_s: float,
    decode_responses: bool = True,
) -> AsyncRedis:
    """An asyncio client on a pool of at most ``max_connections`` connections (per node on a
    cluster) that waits up to ``pool_timeout_s`` for a free one (not on a cluster)."""
    target = _as_target(where)
    policy = _policy(
        AsyncRetry(RETRY_BACKOFF, RETRIES, supported_errors=RETRY_ON), decode_responses
    )
    if target.cluster:
        return redis.asyncio.RedisCluster.from_url(
            target.url, max_connections=max_connections, **policy
        )
    if target.sentinels:
        sentinel = redis.asyncio.sentinel.Sentinel(
            list(target.sentinels), socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=CONNECT_TIMEOUT_S,
        )
        assert target.sentinel_master is not None
        return sentinel.master_for(
            target.sentinel_master, connection_pool_class=_BlockingSentinelPool,
            max_connections=max_connections, timeout=pool_timeout_s,
            **_primary_kwargs(target.url), **policy,
        )
    pool = redis.asyncio.BlockingConnectionPool.from_url(
        target.url, max_connections=max_connections, timeout=pool_timeout_s, **policy
    )
    return redis.asyncio.Redis.from_pool(pool)


@asynccontextmanager
async def pubsub(client: AsyncRedis, **kwargs: Any) -> AsyncIterator[PubSub]:
    """A pub/sub session for ``SUBSCRIBE`` on ``client``; on a Redis Cluster on a plain
    connection to one primary, a random one each time (``PUBLISH`` on a cluster reaches every
    node, so one node hears every notice; after a failure the next session tries another)."""
    if not isinstance(client, redis.asyncio.RedisCluster):
        async with client.pubsub(**kwargs) as session:
            yield session
        return
    await client.initialize()
    node = random.choice(client.get_primaries())
    one_node = redis.asyncio.ConnectionPool(
        connection_class=node.connection_class, max_connections=1, **node.connection_kwargs
    )
    plain = redis.asyncio.Redis.from_pool(one_node)
    try:
        async with plain.pubsub(**kwargs) as session:
            yield session
    finally:
        await plain.aclose()
