"""The protocols' tests: a real ``olss gateway`` and a real ``olss worker`` serving the embedded
``olss-digits`` model, on their own Redis database, driven by the real client libraries.

The gateway sends webhooks (``WEBHOOK_SECRET``), may call loopback receivers (the allowlist
setting) and retries fast; the worker takes ``STEP_DELAY_MS`` per step, so a test can watch a
job run (A1111 progress, interrupt). ``spawn_protocol_gateway`` starts more gateways on the same
database (one with API keys; one to restart).
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import redis

from tests.support.jobs import wait_for
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url

pytestmark = pytest.mark.e2e

PROTOCOLS_DB = 11
WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"olss-serve protocol tests, 32 bytes").decode()
STEP_DELAY_MS = 60
GATEWAY_SETTINGS = {
    "webhook_secret": WEBHOOK_SECRET,
    "webhook_allow_networks": "127.0.0.0/8,::1/128",
    "webhook_retry_base_s": 0.2,
    "webhook_retry_max_s": 1.0,
    "webhook_max_attempts": 4,
    "webhook_lease_ms": 1500,
    "webhook_timeout_s": 2,
    "a1111_preview_every": 1,
}


@dataclass
class Services:
    gateway: Gateway
    worker: Worker
    env: dict[str, str]
    db: redis.Redis


def spawn_protocol_gateway(env: dict[str, str], **settings: object) -> Gateway:
    """Another gateway on the services' database, with ``settings`` on top of theirs."""
    extra = {f"OLSS_{name.upper()}": str(value) for name, value in settings.items()}
    return spawn_gateway({**env, **extra}).wait_ready()


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    with clean_db(PROTOCOLS_DB) as db:
        env = service_env(redis_url(PROTOCOLS_DB), cache_dir=tmp_path_factory.mktemp("cache"),
                          **GATEWAY_SETTINGS)
        worker = spawn_worker({**env, "OLSS_TEST_STEP_DELAY_MS": str(STEP_DELAY_MS)})
        services = Services(spawn_gateway(env), worker, env, db)
        try:
            worker.wait_ready()
            services.gateway.wait_ready()
            wait_for(lambda: httpx.get(f"{services.gateway.url}/readyz").status_code == 200,
                     120, "the worker to be ready")
            yield services
        finally:
            services.gateway.stop()  # a test may have replaced the first one
            worker.stop()
