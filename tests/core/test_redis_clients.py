"""The Redis client factory: one retry and timeout policy, on one server, a real Redis Cluster
and a real Sentinel-watched primary, for the worker's sync clients and the gateway's asyncio
ones, built from the settings."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio
from redis.retry import Retry

from olss_core.keys import FINISHED_CHANNEL, job_key, new_job_id, queued_zset
from olss_core.redis_clients import (
    HEALTH_CHECK_INTERVAL_S,
    RETRIES,
    RETRY_BACKOFF,
    RETRY_ON,
    SOCKET_TIMEOUT_S,
    RedisTarget,
    async_client,
    pubsub,
    sync_client,
)
from olss_core.settings import load_settings
from tests.support.ports import free_port
from tests.support.redis_cluster import RedisClusterNodes
from tests.support.redis_db import UNIT_DB, redis_url
from tests.support.redis_sentinel import MASTER_NAME, SentinelGroup, redis_sentinel
from workers.receiver import READ_BLOCK_MS


@pytest.fixture(scope="module")
def sentinel_group() -> Iterator[SentinelGroup]:
    with redis_sentinel() as group:
        yield group


def test_the_client_retries_with_backoff_and_bounds_its_waits() -> None:
    client = sync_client(redis_url(UNIT_DB))
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
    client = sync_client(f"redis://127.0.0.1:{free_port()}/0")
    started = time.monotonic()
    with pytest.raises(redis.ConnectionError):
        client.ping()
    assert time.monotonic() - started < 5


def test_the_settings_name_the_topology() -> None:
    assert RedisTarget.of(load_settings()).kind == "standalone"
    cluster = RedisTarget.of(load_settings(redis_cluster=True, redis_url="redis://node-a:7000"))
    assert (cluster.kind, cluster.url) == ("cluster", "redis://node-a:7000")
    sentinel = RedisTarget.of(load_settings(
        redis_sentinels="s1:26379, s2:26380", redis_sentinel_master="primary",
    ))
    assert sentinel.kind == "sentinel"
    assert sentinel.sentinels == (("s1", 26379), ("s2", 26380))
    assert sentinel.sentinel_master == "primary"


@pytest.mark.parametrize(("settings", "named"), [
    ({"redis_sentinels": "s1:26379"}, "OLSS_REDIS_SENTINEL_MASTER"),
    ({"redis_sentinel_master": "primary"}, "OLSS_REDIS_SENTINELS"),
    ({"redis_sentinels": "s1", "redis_sentinel_master": "primary"}, "OLSS_REDIS_SENTINELS"),
    ({"redis_cluster": True, "redis_sentinels": "s1:1", "redis_sentinel_master": "p"},
     "OLSS_REDIS_CLUSTER"),
    ({"redis_cluster": True, "redis_url": "redis://node:7000/3"}, "database 0"),
    ({"redis_cluster": True, "redis_url": "unix:///run/redis.sock"}, "OLSS_REDIS_CLUSTER"),
])
def test_a_topology_that_cannot_work_stops_start_up(settings: dict, named: str) -> None:
    with pytest.raises(SystemExit, match=named):
        load_settings(**settings)


def test_cluster_clients_reach_every_slot_and_keep_a_job_in_one(
    cluster: RedisClusterNodes,
) -> None:
    target = RedisTarget.of(load_settings(redis_cluster=True, redis_url=cluster.url))
    client = sync_client(target)
    try:
        assert isinstance(client, redis.RedisCluster)
        models = [f"model-{n}" for n in range(12)]
        for model in models:  # twelve models' keys land on more than one node
            client.set(queued_zset(model) + ":probe", model)
        nodes = {client.get_node_from_key(queued_zset(m)).name for m in models}
        assert len(nodes) > 1
        job = new_job_id("model-0")
        with client.pipeline(transaction=True) as pipe:  # one MULTI over a job's and its
            pipe.hset(job_key(job), "status", "queued")  # model's keys: one slot
            pipe.zadd(queued_zset("model-0"), {job: 1.0})
            pipe.execute()
        with pytest.raises(redis.RedisClusterException), client.pipeline(True) as pipe:
            pipe.set(queued_zset("model-0"), "x")  # two models: refused, not half done
            pipe.set(queued_zset("model-1"), "x")
            pipe.execute()
    finally:
        client.close()

    async def gateway_side() -> str | None:
        aclient = async_client(target, max_connections=4, pool_timeout_s=1)
        try:
            assert isinstance(aclient, redis.asyncio.RedisCluster)
            return await aclient.hget(job_key(job), "status")
        finally:
            await aclient.aclose()

    assert asyncio.run(gateway_side()) == "queued"


def test_a_cluster_subscriber_hears_a_notice_published_on_any_node(
    cluster: RedisClusterNodes,
) -> None:
    async def listen() -> set[str]:
        client = async_client(RedisTarget(cluster.url, cluster=True), 4, 1.0)
        heard: set[str] = set()
        try:
            async with pubsub(client, ignore_subscribe_messages=True) as session:
                await session.subscribe(FINISHED_CHANNEL)
                for port in cluster.ports:
                    with redis.Redis(port=port) as node:
                        node.publish(FINISHED_CHANNEL, f"from-{port}")
                deadline = time.monotonic() + 5
                while len(heard) < len(cluster.ports) and time.monotonic() < deadline:
                    message = await session.get_message(timeout=0.5)
                    if message is not None:
                        heard.add(message["data"])
        finally:
            await client.aclose()
        return heard

    assert asyncio.run(listen()) == {f"from-{port}" for port in cluster.ports}


def sentinel_target(group: SentinelGroup) -> RedisTarget:
    return RedisTarget.of(load_settings(
        redis_url="redis://ignored-host:1/2", redis_sentinels=group.sentinels,
        redis_sentinel_master=MASTER_NAME,
    ))


def test_sentinel_clients_follow_the_primary_through_a_failover(
    sentinel_group: SentinelGroup,
) -> None:
    target = sentinel_target(sentinel_group)
    client = sync_client(target)
    try:
        client.set("before", "1")
        assert client.wait(1, 5000) == 1  # on the replica too before it is promoted
        with redis.Redis(port=sentinel_group.primary_port, db=2) as primary:
            assert primary.get("before") == b"1"  # the URL's database, on the named primary
        new_primary = sentinel_group.fail_over()
        assert new_primary[1] == sentinel_group.replica_port
        client.set("after", "2")  # the client asks the Sentinel again
        with redis.Redis(port=new_primary[1], db=2) as primary:
            assert primary.get("after") == b"2"
    finally:
        client.close()

    async def gateway_side() -> tuple[str | None, str | None]:
        aclient = async_client(target, max_connections=1, pool_timeout_s=2)
        try:
            # One connection: the second command waits for it instead of failing.
            return tuple(await asyncio.gather(aclient.get("before"), aclient.get("after")))
        finally:
            await aclient.aclose()

    assert asyncio.run(gateway_side()) == ("1", "2")
