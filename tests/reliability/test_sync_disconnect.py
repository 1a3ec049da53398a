"""Item 9: a sync client that hangs up cancels its job, unless an Idempotency-Key lets another
request wait for it (then it runs, and a retry with the key gets it)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable

import pytest

from olss_core.keys import STREAM_JOB_FIELD, jobs_stream
from olss_core.redis_clients import sync_client
from tests.reliability.conftest import MODEL, RedisServer, client
from tests.support.jobs import wait_status
from tests.support.processes import Gateway


def hang_up(server: Gateway, **headers: str) -> None:
    """A sync POST whose client closes its connection after waiting 1 s for the answer."""
    body = json.dumps({"prompt": "x"}).encode()
    head = "".join(f"{name}: {value}\r\n" for name, value in {
        "Host": "gateway", "Content-Type": "application/json", "Content-Length": len(body),
        **headers}.items())
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(f"POST /generate HTTP/1.1\r\n{head}\r\n".encode() + body)
        sock.settimeout(1)
        with pytest.raises(TimeoutError):
            sock.recv(1)


def job_ids(redis_server: RedisServer) -> list[str]:
    """Every job ever queued for the model, in order (its jobs stream keeps unstarted ones)."""
    entries = sync_client(redis_server.url()).xrange(jobs_stream(MODEL))
    return [fields[STREAM_JOB_FIELD] for _, fields in entries]


def test_a_sync_client_that_hangs_up_cancels_its_job(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()
    with client(server) as http:
        before = http.post("/generate", json={"prompt": "keep me"},
                           headers={"Prefer": "respond-async"}).json()["id"]
        hang_up(server)
        hung_up_at = time.monotonic()
        job_id = job_ids(redis_server)[-1]
        assert job_id != before
        view = wait_status(http, job_id, "canceled", timeout_s=5)
        canceled_after = time.monotonic() - hung_up_at
        print(f"\njob of a hung-up sync client canceled {canceled_after:.2f} s after the hang-up")
        assert view["status"] == "canceled"
        assert http.get(f"/jobs/{before}").json()["status"] == "queued"


def test_with_an_idempotency_key_the_job_survives_the_hang_up(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()
    with client(server) as http:
        hang_up(server, **{"Idempotency-Key": "k1"})
        job_id = job_ids(redis_server)[-1]
        time.sleep(1.5)
        assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"
        again = http.post("/generate", json={"prompt": "x"},
                          headers={"Idempotency-Key": "k1", "Prefer": "respond-async"})
        assert again.json()["id"] == job_id
