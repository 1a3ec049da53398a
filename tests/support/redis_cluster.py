"""A real three-node Redis Cluster on loopback for tests: ``redis-server --cluster-enabled yes``
processes joined with ``redis-cli --cluster create`` (three primaries, no replicas)."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis

from tests.support.ports import free_port

START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class RedisClusterNodes:
    """The running nodes: ports and the URL of one node (a cluster client finds the rest)."""

    ports: tuple[int, ...]
    processes: tuple[subprocess.Popen, ...]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"


def binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not on PATH (Debian's redis-server package has it)")
    return path


def wait_until_up(port: int, deadline: float) -> None:
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    try:
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        client.close()


def stop_servers(processes: list[subprocess.Popen], workdir: Path) -> None:
    """SIGTERM every server, SIGKILL those still up after 10 s, and delete their folder."""
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    shutil.rmtree(workdir, ignore_errors=True)


def _wait_until_ok(port: int, deadline: float) -> None:
    client = redis.Redis(port=port, decode_responses=True)
    try:
        while client.cluster("info")["cluster_state"] != "ok":
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    finally:
        client.close()


@contextmanager
def redis_cluster(nodes: int = 3) -> Iterator[RedisClusterNodes]:
    """Start ``nodes`` cluster-enabled servers, create the cluster, stop them at the end."""
    workdir = Path(tempfile.mkdtemp(prefix="olss-redis-cluster-"))
    ports = tuple(free_port() for _ in range(nodes))
    processes = []
    try:
        for port in ports:
            node_dir = workdir / str(port)
            node_dir.mkdir()
            # The bus port is chosen too: the default, port + 10000, is past 65535 for a
            # free port above 55535, and such a node never starts.
            processes.append(subprocess.Popen(
                [binary("redis-server"), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-port", str(free_port()),
                 "--cluster-config-file", "nodes.conf",
                 "--save", "", "--appendonly", "no", "--dir", str(node_dir)],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            ))
        deadline = time.monotonic() + START_TIMEOUT_S
        for port in ports:
            wait_until_up(port, deadline)
        subprocess.run(
            [binary("redis-cli"), "--cluster", "create",
             *(f"127.0.0.1:{port}" for port in ports), "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=START_TIMEOUT_S,
        )
        _wait_until_ok(ports[0], deadline)
        yield RedisClusterNodes(ports, tuple(processes))
    finally:
        stop_servers(processes, workdir)
