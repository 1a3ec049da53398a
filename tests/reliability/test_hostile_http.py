"""Item 10: hostile HTTP clients. Oversized bodies are refused unread (413), oversized headers
are refused at the limit (400), and connections that send nothing, send slowly or idle after a
request are closed; the gateway's memory does not grow with what a client sends."""

from __future__ import annotations

import http.client
import socket
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tests.reliability.conftest import RedisServer
from tests.support.processes import Gateway

MB = 1 << 20
REQUEST_TIMEOUT_S = 2
KEEP_ALIVE_S = 1


def rss_mb(process: Gateway) -> float:
    for line in Path(f"/proc/{process.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def connect(server: Gateway) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def send_until_closed(sock: socket.socket, head: bytes, body_bytes: int, chunk: bytes) -> int:
    """Send ``head`` then up to ``body_bytes`` of ``chunk``s; bytes of body sent before the
    server stopped reading (answered and closed)."""
    sock.sendall(head)
    sent = 0
    try:
        while sent < body_bytes:
            sock.sendall(chunk)
            sent += len(chunk)
    except (BrokenPipeError, ConnectionResetError):
        pass
    return sent


def read_status(sock: socket.socket) -> int:
    try:
        reply = sock.recv(4096)
    except ConnectionResetError:
        return 0
    return int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1") else 0


def closed_after(sock: socket.socket, trickle: bytes = b"", every_s: float = 0.5) -> float:
    """Seconds until the server closes ``sock``, sending ``trickle`` one byte per ``every_s``."""
    started = time.monotonic()
    sock.settimeout(every_s)
    for n in range(200):
        try:
            if trickle:
                sock.send(trickle[n % len(trickle):][:1])
            if sock.recv(4096) == b"":
                return time.monotonic() - started
        except TimeoutError:
            continue
        except (BrokenPipeError, ConnectionResetError):
            return time.monotonic() - started
    raise AssertionError("the server never closed the connection")


def test_a_300_mb_body_is_refused_unread(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()
    baseline = rss_mb(server)
    declared = connect(server)
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(300 * MB).encode() + b"\r\n\r\n")
    sent = send_until_closed(declared, head, 300 * MB, b"x" * MB)
    status = read_status(declared)
    declared.close()
    chunked = connect(server)
    head = (b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = hex(MB)[2:].encode() + b"\r\n" + b"x" * MB + b"\r\n"
    sent_chunked = send_until_closed(chunked, head, 300 * MB, chunk)
    status_chunked = read_status(chunked)
    chunked.close()
    grown = rss_mb(server) - baseline
    print(f"\n300 MB declared: {status} after {sent / MB:.0f} MB sent; chunked: "
          f"{status_chunked} after {sent_chunked / MB:.0f} MB; gateway RSS grew {grown:.1f} MB")
    assert status == 413 and status_chunked == 413
    assert sent < 300 * MB and sent_chunked < 300 * MB
    assert grown < 50


def test_a_16_mb_header_is_refused_at_the_limit(
    redis_server: RedisServer, gateway: Callable[..., Gateway]
) -> None:
    server = gateway()
    baseline = rss_mb(server)
    sock = connect(server)
    sent = send_until_closed(sock, b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ", 16 * MB,
                             b"a" * 65536)
    status = read_status(sock)
    sock.close()
    grown = rss_mb(server) - baseline
    print(f"\n16 MB header: {status} after {sent / MB:.1f} MB sent; RSS grew {grown:.1f} MB")
    assert status == 400 and sent < 16 * MB and grown < 20
    assert httpx.get(f"{server.url}/healthz", headers={"X-Ok": "a" * 8000}).status_code == 200


def test_idle_slow_and_lingering_connections_are_closed(
    redis_server: RedisServer, gateway: Callable[..., Gateway]
) -> None:
    server = gateway(request_timeout_s=REQUEST_TIMEOUT_S, keep_alive_s=KEEP_ALIVE_S)
    silent = closed_after(connect(server))
    slowloris = closed_after(connect(server), b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: b")
    lingering = connect(server)
    lingering.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert read_status(lingering) == 200
    idle_after_request = closed_after(lingering)
    print(f"\nclosed: silent after {silent:.1f} s, slowloris after {slowloris:.1f} s, idle "
          f"keep-alive after {idle_after_request:.1f} s")
    assert REQUEST_TIMEOUT_S - 0.5 < silent < REQUEST_TIMEOUT_S + 1.5
    assert REQUEST_TIMEOUT_S - 0.5 < slowloris < REQUEST_TIMEOUT_S + 1.5
    assert idle_after_request < KEEP_ALIVE_S + 1.5
    with httpx.Client(base_url=server.url) as http:  # a prompt client is unaffected
        assert [http.get("/healthz").status_code for _ in range(3)] == [200, 200, 200]


def test_the_header_limit_counts_the_request_target_and_header_lines(
    redis_server: RedisServer, gateway: Callable[..., Gateway]
) -> None:
    """A whole head in one read: refused when its request target plus header lines (name,
    ": ", value, CRLF) pass ``OLSS_MAX_HEADER_BYTES``, served when they fit; the connection
    after a refusal is closed, a served one is kept alive."""
    limit = 4096
    server = gateway(max_header_bytes=limit)

    def head(size: int) -> bytes:
        fixed = len(b"/healthz") + len(b"Host") + len(b"x") + 4 + len(b"X-Pad") + 4
        return (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * (size - fixed)
                + b"\r\n\r\n")

    def reply(sock: socket.socket) -> tuple[int, bool]:
        """The status of the next whole response on ``sock``, and whether it closes."""
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        return response.status, response.will_close

    fits, over = connect(server), connect(server)
    fits.sendall(head(limit))
    over.sendall(head(limit + 1))
    assert (reply(fits), reply(over)) == ((200, False), (400, True))
    assert over.recv(4096) == b""  # closed
    fits.sendall(head(limit))
    assert reply(fits) == (200, False)  # the same connection serves the next request
