"""Item 14: schemathesis (``--checks all``) against a real gateway and a real olss-digits worker:
no server error, no undocumented status, no schema-valid request refused, every response as its
schema says. A short run here; the 2,000-case run is in docs/RELIABILITY.md."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from tests.reliability.conftest import RedisServer
from tests.support.processes import REPO_ROOT, Gateway, service_env, start_worker

HOOKS = "tests.reliability.schemathesis_hooks"
STACK = {"max_steps": 30, "sync_timeout_s": 5, "max_queue_depth": 64}
"""A CPU-sized deployment: at most 30 steps, sync waits of 5 s (then 202), 64 queued jobs."""


def schemathesis(url: str, workdir: Path, *options: str) -> subprocess.CompletedProcess:
    """``schemathesis run`` in ``workdir`` (where it keeps its replay cache)."""
    env = {**os.environ, "SCHEMATHESIS_HOOKS": HOOKS, "PYTHONPATH": str(REPO_ROOT)}
    command = [str(Path(sys.executable).with_name("schemathesis")), "run", f"{url}/openapi.json",
               "--checks", "all", "--workers", "1", "--request-timeout", "30", *options]
    return subprocess.run(command, env=env, cwd=workdir, capture_output=True, text=True,
                          timeout=300)


def test_schemathesis_finds_nothing(
    redis_server: RedisServer, gateway: Callable[..., Gateway], tmp_path: Path
) -> None:
    env = service_env(redis_server.url(), cache_dir=tmp_path / "cache", **STACK)
    with start_worker(env):
        server = gateway(**STACK)
        run = schemathesis(server.url, tmp_path, "--max-examples", "5", "--phases",
                           "examples,coverage,fuzzing", "--max-time", "25")
    summary = re.search(r"(\d+) generated, (\d+) passed", run.stdout)
    print(f"\nschemathesis: {summary.group(0) if summary else run.stdout[-2000:]}")
    assert run.returncode == 0, run.stdout[-6000:]
    assert summary and summary.group(1) == summary.group(2) and int(summary.group(1)) > 100
