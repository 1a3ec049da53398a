"""Scale to zero (issue 13): a model whose last worker stopped is *sleeping*. A gateway with
``OLSS_ACCEPT_SLEEPING_MODELS`` still queues its jobs, validated against the last ready
heartbeat, and stays ready, so an autoscaler reading the queue (KEDA) can start a worker, which
runs them. A gateway without the setting answers 503 ``no_worker`` and is not ready."""

from __future__ import annotations

from pathlib import Path

from tests.reliability.conftest import MODEL, RedisServer, client
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.processes import service_env, start_gateway, start_worker


def test_a_sleeping_model_queues_jobs_that_the_next_worker_runs(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    env = service_env(redis_server.url(), cache_dir=tmp_path / "cache")
    first = start_worker(env)
    accepting = start_gateway({**env, "OLSS_ACCEPT_SLEEPING_MODELS": "true"})
    strict = start_gateway(env)
    try:
        with client(accepting) as http, client(strict) as other:
            for gateway in (http, other):
                wait_for(lambda g=gateway: g.get("/readyz").status_code == 200, what="ready")
            first.stop()
            wait_for(lambda: other.get("/readyz").status_code == 503, what="no live worker")

            refused = other.post("/generate", json={"prompt": "the number 2"},
                                 headers={"Prefer": "respond-async"})
            assert (refused.status_code, refused.json()["error_type"]) == (503, "no_worker")
            readiness = http.get("/readyz")
            assert readiness.status_code == 200, readiness.text
            assert readiness.json()["sleeping"] == [MODEL]
            too_large = http.post("/generate", json={"prompt": "x", "width": 512, "height": 512},
                                  headers={"Prefer": "respond-async"})
            assert too_large.status_code == 422, too_large.text  # the last heartbeat's limits

            queued = submit(http, prompt="the number 2", seed=3)
            assert wait_status(http, queued, "queued")["status"] == "queued"
            second = start_worker(env)
            try:
                view = wait_status(http, queued, "succeeded", "failed", timeout_s=120)
                assert view["status"] == "succeeded", view
            finally:
                second.stop()
    finally:
        accepting.stop()
        strict.stop()
        first.stop()
