"""A Redis at ``maxmemory`` (with ``noeviction``, as compose and Kubernetes run it) refuses
writes: the gateway answers 503 ``redis_full`` with ``Retry-After`` and queues nothing, and takes
jobs again as soon as there is room. No job already accepted is dropped."""

from __future__ import annotations

from collections.abc import Callable

import redis

from app.errors import REDIS_FULL_RETRY_AFTER_S
from olss_core.keys import STREAM_JOB_FIELD, jobs_stream
from tests.reliability.conftest import MODEL, RedisServer, client
from tests.support.processes import Gateway

ASYNC = {"Prefer": "respond-async"}


def test_a_full_redis_is_a_503_with_retry_after_and_loses_nothing(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway()
    admin = redis.Redis.from_url(redis_server.url(), decode_responses=True)
    with client(server) as http:
        accepted = http.post("/generate", json={"prompt": "before"}, headers=ASYNC)
        assert accepted.status_code == 202, accepted.text
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", str(admin.info("memory")["used_memory"] // 2))
        try:
            refused = http.post("/generate", json={"prompt": "while full"}, headers=ASYNC)
            body = refused.json()
            assert refused.status_code == 503, refused.text
            assert body["error_type"] == "redis_full"
            assert refused.headers["retry-after"] == str(REDIS_FULL_RETRY_AFTER_S)
            assert http.get(f"/jobs/{accepted.json()['id']}").status_code == 200  # reads work
        finally:
            admin.config_set("maxmemory", "0")
        again = http.post("/generate", json={"prompt": "after"}, headers=ASYNC)
        assert again.status_code == 202, again.text
    queued = [fields[STREAM_JOB_FIELD] for _, fields in admin.xrange(jobs_stream(MODEL))]
    assert queued == [accepted.json()["id"], again.json()["id"]]
