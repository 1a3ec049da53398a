"""A Redis at ``maxmemory`` (with ``noeviction``, as compose and Kubernetes run it) refuses
writes: the gateway answers 503 ``redis_full`` with ``Retry-After`` and queues nothing, and takes
jobs again as soon as there is room; a worker's store is refused whole and succeeds later. No job
already accepted is dropped."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis

from app.errors import REDIS_FULL_RETRY_AFTER_S
from olss_core.job_states import JobStatus
from olss_core.keys import GROUP, STREAM_JOB_FIELD, events_key, image_key, job_key, jobs_stream
from olss_core.settings import Settings
from tests.reliability.conftest import MODEL, RedisServer, client
from tests.support.processes import Gateway
from tests.support.queued_jobs import MODEL as QUEUED_MODEL
from tests.support.queued_jobs import enqueue, job_spec
from tests.support.thread_worker import TIMINGS
from workers.lifecycle import JobLifecycle, JobResult

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


def test_a_full_redis_refuses_a_batch_store_whole_and_the_job_is_stored_once_there_is_room(
    redis_server: RedisServer,
) -> None:
    """The worker's ``SUCCEED`` at ``maxmemory``: refused before anything is written (no image
    without its record, no entry acknowledged without its result), so the job stays pending,
    and the same store succeeds once Redis has room."""
    settings = Settings(redis_url=redis_server.url())
    (job_id,) = enqueue(settings, [job_spec()])
    admin = redis.Redis.from_url(redis_server.url(), decode_responses=True)
    worker = JobLifecycle(admin, settings, QUEUED_MODEL, "w")
    worker.ensure_group()
    ((_, job),) = worker.start(worker.load(worker.read_new(8, None)))
    result = JobResult(job, [b"\x89PNG" + bytes(4096)], "sched", TIMINGS)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", str(admin.info("memory")["used_memory"] // 2))
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            worker.succeed([result])
        assert admin.exists(image_key(job_id, 0)) == 0
        assert admin.hget(job_key(job_id), "status") == JobStatus.RUNNING.value
        assert admin.xpending(jobs_stream(QUEUED_MODEL), GROUP)["pending"] == 1
        assert "finished" not in [f["type"] for _, f in admin.xrange(events_key(job_id))]
    finally:
        admin.config_set("maxmemory", "0")
    worker.succeed([result])
    assert admin.hget(job_key(job_id), "status") == JobStatus.SUCCEEDED.value
    assert admin.xpending(jobs_stream(QUEUED_MODEL), GROUP)["pending"] == 0
    assert admin.exists(image_key(job_id, 0)) == 1
