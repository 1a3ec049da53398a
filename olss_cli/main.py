"""The ``olss`` command: ``gateway``, ``worker``, ``serve`` (dev all-in-one), ``keys``,
``calibrate`` and ``schedules list|show`` (:mod:`olss_cli.schedule_commands`).

Importing this module loads neither torch nor diffusers, nor ``app``, ``workers`` or
``schedules``: each subcommand imports what it runs.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import time

from olss_cli import schedule_commands
from olss_core import __version__
from olss_core.logging_setup import configure_logging
from olss_core.settings import load_settings

CHILD_STOP_TIMEOUT_S = 30.0


def run_gateway(args: argparse.Namespace) -> int:
    """Serve ``app.main:app`` with uvicorn; SIGTERM drains in-flight requests first.

    HTTP/1.1 by httptools with a bounded request target plus headers (``OLSS_MAX_HEADER_BYTES``),
    a deadline for each whole request (``OLSS_REQUEST_TIMEOUT_S``) and for idle keep-alive
    connections (``OLSS_KEEP_ALIVE_S``); the body limit is the app's (``OLSS_MAX_BODY_BYTES``).
    Logging is ``olss_core.logging_setup``'s: uvicorn's own config and access log are off (the
    gateway logs one line per request itself).
    """
    import uvicorn

    from app.http_protocol import deadline_protocol

    settings = load_settings()
    configure_logging(settings)
    uvicorn.run(
        "app.main:app",
        host=args.host or settings.gateway_host,
        port=settings.gateway_port if args.port is None else args.port,
        http=deadline_protocol(settings.request_timeout_s, settings.max_header_bytes),
        timeout_keep_alive=settings.keep_alive_s,
        log_config=None,
        log_level=settings.log_level,
        access_log=False,
        timeout_graceful_shutdown=int(settings.sync_timeout_s) + 5,
    )
    return 0


def run_worker(args: argparse.Namespace) -> int:
    """One worker for ``--model`` (default ``OLSS_MODEL``, else the embedded dev model)."""
    settings = load_settings()
    configure_logging(settings)
    from workers.main import run_worker as serve

    return serve(settings, args.model)


def run_serve(args: argparse.Namespace) -> int:
    """Dev all-in-one: a Redis (a private one if none answers), one gateway, one worker.

    Ctrl-C or SIGTERM stops the worker and the gateway, then the private Redis.
    """
    from olss_cli.dev_redis import ensure_redis

    settings = load_settings()
    configure_logging(settings)
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


def run_keys(args: argparse.Namespace) -> int:
    """Print the Redis stream and consumer group the workers of ``--model`` read, as the YAML of
    a KEDA ``redis-streams`` trigger's metadata (deploy/k8s). Torch-free.

    The model key is the worker's: ``model_key`` of what ``resolve_model`` loads, so a hub id or
    an embedded name is its own key and a local folder is its folder name.
    """
    from olss_core.keys import GROUP, jobs_stream
    from schedules.registry import model_key
    from workers.embedded_model import resolve_model

    key = model_key(resolve_model(args.model or load_settings().model))
    print(f"# the jobs stream of model key {json.dumps(key)}")
    print(f"stream: {json.dumps(jobs_stream(key))}")
    print(f"consumerGroup: {json.dumps(GROUP)}")
    return 0


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
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
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

    keys = commands.add_parser(
        "keys", help="print a model's jobs stream and consumer group (for KEDA's scaler)"
    )
    keys.add_argument("--model", help="as for 'olss worker' (default OLSS_MODEL, else olss-digits)")
    keys.set_defaults(func=run_keys)

    schedule_commands.register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
