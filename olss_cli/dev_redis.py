"""Make sure a real Redis server answers at a URL, starting a private one when none does.

Used by ``make test`` / ``make run`` (``python -m olss_cli.dev_redis ensure``) and by
``olss serve``. The server is the real ``redis-server`` binary (Debian's ``redis-server``
package); it is never a mock.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlparse

import redis

from olss_core.settings import load_settings

LOCAL_HOSTS = {"127.0.0.1", "localhost", "::1"}


def redis_answers(url: str, timeout_s: float = 0.5) -> bool:
    """True when a Redis server at ``url`` replies to PING."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout_s, socket_timeout=timeout_s)
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False
    finally:
        client.close()


def _server_binary() -> str:
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError(
            "no Redis answers and no redis-server binary is on PATH: "
            "install it (apt-get install redis-server) or set OLSS_REDIS_URL"
        )
    return binary


def start_local_redis(url: str, daemonize: bool) -> subprocess.Popen | None:
    """Start ``redis-server`` on the URL's port with no persistence; wait until it answers.

    With ``daemonize`` the server outlives this process (``make test``); otherwise the caller
    owns the returned process and stops it (``olss serve``).
    """
    parsed = urlparse(url)
    host = parsed.hostname or "127.0.0.1"
    if host not in LOCAL_HOSTS:
        raise RuntimeError(f"no Redis answers at {url} and {host} is not this machine")
    port = parsed.port or 6379
    args = [
        _server_binary(), "--bind", "127.0.0.1", "--port", str(port), "--save", "",
        "--appendonly", "no", "--dir", tempfile.gettempdir(),
        "--daemonize", "yes" if daemonize else "no",
    ]
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if redis_answers(url):
            return None if daemonize else process
        time.sleep(0.1)
    process.kill()
    raise RuntimeError(f"started redis-server on port {port} but it did not answer within 10 s")


def ensure_redis(url: str, daemonize: bool = False) -> subprocess.Popen | None:
    """Return None when Redis already answers, else start one (see ``start_local_redis``)."""
    if redis_answers(url):
        return None
    return start_local_redis(url, daemonize=daemonize)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("command", choices=["ensure"])
    parser.add_argument("--url", default=None, help="Redis URL (default: OLSS_REDIS_URL)")
    args = parser.parse_args(argv)
    url = args.url or load_settings().redis_url
    already = redis_answers(url)
    ensure_redis(url, daemonize=True)
    print(f"redis at {url}: {'answering' if already else 'started'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
