"""Fixtures of the ground-floor tests: one real three-node Redis Cluster per run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_cluster import RedisClusterNodes, redis_cluster


@pytest.fixture(scope="session")
def cluster() -> Iterator[RedisClusterNodes]:
    with redis_cluster() as nodes:
        yield nodes
