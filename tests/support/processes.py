"""Start ``olss gateway`` / ``olss worker`` as real subprocesses, wait until ready, stop them.

Reusable outside the service tests (e.g. a deployment test reading ``/metrics``)::

    env = service_env(redis_url=redis_url(E2E_DB), schedule_dir=..., model=...)
    with start_worker(env) as worker, start_gateway(env) as gateway:
        httpx.get(gateway.url + "/metrics"); httpx.get(worker.metrics_url)

Output of each process goes to a log file, shown in the error when it fails to start.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from olss_core.keys import worker_key
from olss_core.protocol import WorkerInfo
from olss_core.redis_clients import RedisTarget, sync_client
from olss_core.settings import Settings
from tests.support.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_START_TIMEOUT_S = 30.0
WORKER_START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0


def service_env(
    redis_url: str,
    schedule_dir: Path | str | None = None,
    model: Path | str | None = None,
    cache_dir: Path | str | None = None,
    **settings: object,
) -> dict[str, str]:
    """An environment for service processes: this one's, plus ``OLSS_*`` settings.

    ``settings`` keys are setting names without the prefix (``lease_ms=500``). Torch uses one
    thread per process, so several processes share a small machine without thrashing.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("OLSS_")}
    env.update(
        OLSS_REDIS_URL=redis_url,
        OLSS_WORKER_METRICS_PORT="0",
        OLSS_WORKER_METRICS_HOST="127.0.0.1",
        OLSS_AUTO_CALIBRATE="0",  # a test that wants start-up calibration turns it on
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")])),
    )
    if schedule_dir is not None:
        env["OLSS_SCHEDULE_DIR"] = str(schedule_dir)
    if model is not None:
        env["OLSS_MODEL"] = str(model)
    if cache_dir is not None:
        env["OLSS_CACHE_DIR"] = str(cache_dir)
    for name, value in settings.items():
        env[f"OLSS_{name.upper()}"] = str(value)
    return env


@dataclass
class ServiceProcess:
    """A running ``olss`` subprocess with its log file."""

    args: list[str]
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, wait (then SIGKILL); returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        return self.process.wait()

    def kill(self) -> None:
        """SIGKILL now (a crash)."""
        self.process.kill()
        self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()


def spawn_module(
    module: str, args: list[str], env: dict[str, str], name: str
) -> tuple[subprocess.Popen, Path]:
    """``python -m module args`` from the repository root, its output in a new log file."""
    log_path = Path(tempfile.mkstemp(prefix=f"olss-{name}-", suffix=".log")[1])
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", module, *args], env=env, cwd=REPO_ROOT,
            stdout=log_file, stderr=subprocess.STDOUT,
        )
    return process, log_path


def _spawn(args: list[str], env: dict[str, str], name: str) -> tuple[subprocess.Popen, Path]:
    return spawn_module("olss_cli", args, env, name)


def _fail(service: ServiceProcess, why: str) -> None:
    service.stop(timeout_s=5)
    raise RuntimeError(f"{' '.join(service.args)}: {why}\n--- log ---\n{service.log()[-4000:]}")


@dataclass
class Gateway(ServiceProcess):
    url: str = ""

    def wait_ready(self, timeout_s: float = GATEWAY_START_TIMEOUT_S) -> Gateway:
        """Wait until ``/healthz`` answers."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                _fail(self, f"exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        _fail(self, f"no /healthz within {timeout_s} s")
        raise AssertionError("unreachable")


@dataclass
class Worker(ServiceProcess):
    redis: RedisTarget = field(default_factory=lambda: RedisTarget(""))
    worker_id: str = ""
    info: WorkerInfo | None = field(default=None)

    @property
    def metrics_url(self) -> str:
        assert self.info is not None, "wait_ready first"
        return f"http://127.0.0.1:{self.info.metrics_port}/metrics"

    def heartbeat(self) -> WorkerInfo | None:
        """What the worker's heartbeat says now (``None``: no heartbeat)."""
        client = sync_client(self.redis)
        try:
            raw = client.get(worker_key(self.worker_id))
        finally:
            client.close()
        return None if raw is None else WorkerInfo.model_validate_json(raw)

    def wait_ready(self, timeout_s: float = WORKER_START_TIMEOUT_S) -> Worker:
        """Wait for a heartbeat that says ready (loaded and warmed up); keep its info."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                _fail(self, f"exited with {self.process.returncode}")
            info = self.heartbeat()
            if info is not None and info.ready:
                self.info = info
                return self
            time.sleep(0.1)
        _fail(self, f"no ready heartbeat within {timeout_s} s")
        raise AssertionError("unreachable")


def spawn_gateway(env: dict[str, str], port: int | None = None) -> Gateway:
    """Start ``olss gateway`` on 127.0.0.1 without waiting (see ``Gateway.wait_ready``)."""
    port = port or free_port()
    args = ["gateway", "--host", "127.0.0.1", "--port", str(port)]
    process, log_path = _spawn(args, env, "gateway")
    return Gateway(args, process, log_path, url=f"http://127.0.0.1:{port}")


def spawn_worker(
    env: dict[str, str], model: str | None = None, worker_id: str | None = None
) -> Worker:
    """Start ``olss worker`` without waiting (see ``Worker.wait_ready``)."""
    worker_id = worker_id or f"test-worker-{uuid.uuid4().hex[:8]}"
    args = ["worker"] + (["--model", model] if model else [])
    process, log_path = _spawn(args, {**env, "OLSS_WORKER_ID": worker_id}, "worker")
    target = RedisTarget.of(Settings(redis_url=env["OLSS_REDIS_URL"],
                                     redis_cluster=env.get("OLSS_REDIS_CLUSTER", "false")))
    return Worker(args, process, log_path, redis=target, worker_id=worker_id)


def start_gateway(env: dict[str, str], port: int | None = None) -> Gateway:
    """``olss gateway``, returned once ``/healthz`` answers."""
    return spawn_gateway(env, port).wait_ready()


def start_worker(
    env: dict[str, str], model: str | None = None, worker_id: str | None = None
) -> Worker:
    """``olss worker``, returned once its heartbeat is in Redis (warmed up and ready)."""
    return spawn_worker(env, model, worker_id).wait_ready()
