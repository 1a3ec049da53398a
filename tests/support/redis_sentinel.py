"""A real Sentinel-watched Redis on loopback for tests: a primary, one replica and one
``redis-server --sentinel`` (quorum 1) that knows the primary as ``MASTER_NAME``."""

from __future__ import annotations

import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.ports import free_port
from tests.support.redis_cluster import START_TIMEOUT_S, binary, stop_servers, wait_until_up

MASTER_NAME = "olss-primary"


@dataclass(frozen=True)
class SentinelGroup:
    """The running servers: the data nodes' ports (primary first, as started) and the
    Sentinel's."""

    primary_port: int
    replica_port: int
    sentinel_port: int

    @property
    def sentinels(self) -> str:
        """``OLSS_REDIS_SENTINELS`` for this group."""
        return f"127.0.0.1:{self.sentinel_port}"

    def primary(self) -> tuple[str, int]:
        """The primary's address as the Sentinel names it now."""
        client = redis.Redis(port=self.sentinel_port, decode_responses=True)
        try:
            host, port = client.sentinel_get_master_addr_by_name(MASTER_NAME)
            return host, int(port)
        finally:
            client.close()

    def fail_over(self, timeout_s: float = START_TIMEOUT_S) -> tuple[str, int]:
        """Ask the Sentinel to promote the replica; returns the new primary once it is one and
        the old one follows it (until then the old one still takes writes, which it drops)."""
        before = self.primary()
        client = redis.Redis(port=self.sentinel_port, decode_responses=True)
        try:
            client.execute_command("SENTINEL", "FAILOVER", MASTER_NAME)
        finally:
            client.close()
        deadline = time.monotonic() + timeout_s
        while True:
            now = self.primary()
            if now != before and _role(now[1]) == "master" and _role(before[1]) == "slave":
                return now
            if time.monotonic() > deadline:
                raise RuntimeError("the Sentinel did not fail over")
            time.sleep(0.1)


def _role(port: int) -> str:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        return client.role()[0]
    finally:
        client.close()


def _server(port: int, folder: Path, *extra: str) -> subprocess.Popen:
    folder.mkdir()
    return subprocess.Popen(
        [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(folder), *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


@contextmanager
def redis_sentinel() -> Iterator[SentinelGroup]:
    """Start the primary, its replica and the Sentinel; stop them all at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="olss-redis-sentinel-"))
    primary, replica, sentinel = free_port(), free_port(), free_port()
    processes = []
    try:
        processes.append(_server(primary, workdir / "primary"))
        processes.append(_server(replica, workdir / "replica",
                                 "--replicaof", "127.0.0.1", str(primary)))
        config = workdir / "sentinel.conf"
        config.write_text(
            f"port {sentinel}\nbind 127.0.0.1\ndir {workdir}\n"
            f"sentinel monitor {MASTER_NAME} 127.0.0.1 {primary} 1\n"
            f"sentinel down-after-milliseconds {MASTER_NAME} 1000\n"
            f"sentinel failover-timeout {MASTER_NAME} 5000\n"
        )
        processes.append(subprocess.Popen(
            [binary("redis-server"), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        ))
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in (primary, replica, sentinel):
            wait_until_up(port, deadline)
        group = SentinelGroup(primary, replica, sentinel)
        _wait_until_replicated(group, deadline)
        yield group
    finally:
        stop_servers(processes, workdir)


def _wait_until_replicated(group: SentinelGroup, deadline: float) -> None:
    """Until the Sentinel sees the replica in sync (before that it refuses to fail over:
    NOGOODSLAVE)."""
    sentinel = redis.Redis(port=group.sentinel_port, decode_responses=True)
    try:
        while not any(replica.get("master-link-status") == "ok"
                      for replica in sentinel.sentinel_slaves(MASTER_NAME)):
            if time.monotonic() > deadline:
                raise RuntimeError("the replica or the Sentinel did not come up")
            time.sleep(0.1)
    finally:
        sentinel.close()
