"""Queue jobs the way the gateway does (its own ``JobQueue``), from synchronous tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from app.queue import JobQueue
from olss_core.protocol import JobSpec
from olss_core.redis_clients import RedisTarget, async_client
from olss_core.settings import Settings

MODEL = "tiny-sd"


def job_spec(**changes: object) -> JobSpec:
    """A small spec for ``MODEL`` (32x32, 5 OLSS steps at guidance 7.5); ``changes`` override."""
    base: dict[str, object] = {
        "model": MODEL, "prompt": "x", "width": 32, "height": 32, "steps": 5,
        "guidance_scale": 7.5, "seed": 1,
    }
    return JobSpec(**{**base, **changes})


def enqueue(settings: Settings, specs: Sequence[JobSpec]) -> list[str]:
    """Queue ``specs`` in order on the settings' Redis (a server or a cluster); their ids."""

    async def run() -> list[str]:
        client = async_client(RedisTarget.of(settings), max_connections=4, pool_timeout_s=5)
        try:
            queue = JobQueue(client, settings)
            return [(await queue.enqueue(spec)).job_id for spec in specs]
        finally:
            await client.aclose()

    return asyncio.run(run())
