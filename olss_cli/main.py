"""The ``olss`` command: ``gateway``, ``worker``, ``serve`` (dev all-in-one), ``calibrate`` and
``schedules list|show`` (:mod:`olss_cli.schedule_commands`).

Importing this module loads neither torch nor diffusers, nor ``app``, ``workers`` or
``schedules``: each subcommand imports what it runs.
"""

from __future__ import annotations

import argparse
import logging
import signal
import subprocess
import sys
import time

from olss_cli import schedule_commands
from olss_core.settings import Settings, load_settings

CHILD_STOP_TIMEOUT_S = 30.0


def _configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_gateway(args: argparse.Namespace) -> int:
    """Serve ``app.main:app`` with uvicorn; SIGTERM drains in-flight requests first."""
    import uvicorn

    settings = load_settings()
    _configure_logging(settings)
    uvicorn.run(
        "app.main:app",
        host=args.host or settings.gateway_host,
        port=settings.gateway_port if args.port is None else args.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=int(settings.sync_timeout_s) + 5,
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """One worker for ``--model`` (default ``OLSS_MODEL``, else the embedded dev model)."""
    settings = load_settings()
    _configure_logging(settings)
    from workers.main import run_worker as serve

    return serve(settings, args.model)


def run_serve(args: argparse.Namespace) -> int:
    """Dev all-in-one: a Redis (a private one if none answers), one gateway, one worker.

    Ctrl-C or SIGTERM stops the worker and the gateway, then the private Redis.
    """
    from olss_cli.dev_redis import ensure_redis

    settings = load_settings()
    _configure_logging(settings)
    redis_server = ensure_redis(settings.redis_url)
    gateway_cmd = [sys.executable, "-m", "olss_cli", "gateway"]
    if args.host:
        gateway_cmd += ["--host", args.host]
    if args.port is not None:
        gateway_cmd += ["--port", str(args.port)]
    worker_cmd = [sys.executable, "-m", "olss_cli", "worker"]
    if args.model:
        worker_cmd += ["--model", args.model]
    children = [subprocess.Popen(gateway_cmd), subprocess.Popen(worker_cmd)]
    stop = False

    def request_stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        while not stop and all(child.poll() is None for child in children):
            time.sleep(0.2)
    finally:
        failed = _stop_children(children)
        if redis_server is not None:
            redis_server.terminate()
            redis_server.wait(timeout=10)
    return 1 if failed and not stop else 0


def _stop_children(children: list[subprocess.Popen]) -> bool:
    """SIGTERM every child, wait, SIGKILL stragglers; True if one had already exited."""
    exited_early = any(child.poll() is not None for child in children)
    for child in children:
        if child.poll() is None:
            child.terminate()
    deadline = time.monotonic() + CHILD_STOP_TIMEOUT_S
    for child in children:
        try:
            child.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
    return exited_early


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="olss", description="olss-serve: text-to-image with learned OLSS schedules"
    )
    commands = parser.add_subparsers(dest="command", required=True)

    gateway = commands.add_parser("gateway", help="run the HTTP gateway")
    gateway.add_argument("--host", help="default OLSS_GATEWAY_HOST")
    gateway.add_argument("--port", type=int, help="default OLSS_GATEWAY_PORT")
    gateway.set_defaults(func=run_gateway)

    worker = commands.add_parser("worker", help="run one inference worker")
    worker.add_argument("--model", help="HF model id or local diffusers folder")
    worker.set_defaults(func=run_worker)

    serve = commands.add_parser("serve", help="dev: Redis + gateway + one worker")
    serve.add_argument("--host", help="gateway host")
    serve.add_argument("--port", type=int, help="gateway port")
    serve.add_argument("--model", help="worker model")
    serve.set_defaults(func=run_serve)

    schedule_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
