"""The gateway's cached fleet view on a real Redis: a request never uses a view older than its
maximum age, waits for no read while the view is younger, and concurrent requests share one read
that none of them can cancel."""

from __future__ import annotations

import asyncio

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from app.fleet import FleetView
from olss_core.keys import worker_key
from olss_core.protocol import WorkerInfo
from olss_core.redis_clients import async_client
from tests.support.ports import free_port
from tests.support.redis_db import unit_settings
from workers.heartbeat import Heartbeat

MAX_AGE_S = 0.4


def beat(db: redis.Redis, info: WorkerInfo, worker_id: str) -> None:
    Heartbeat(db, info.model_copy(update={"worker_id": worker_id}), ttl_s=60, period_s=60,
              on_beat=lambda: None).beat()


def with_view(body, url: str | None = None):
    async def main():
        client = async_client(url or unit_settings().redis_url, 4, 5.0)
        try:
            return await body(FleetView(client, MAX_AGE_S))
        finally:
            await client.aclose()

    return asyncio.run(main())


def ids(fleet) -> list[str]:
    return sorted(w.worker_id for w in fleet.workers)


def test_a_view_is_refreshed_in_the_background_past_half_its_age_and_never_used_past_it(
    db: redis.Redis, registered_worker: WorkerInfo
) -> None:
    async def body(view: FleetView):
        seen = [ids(await view.get())]  # no view yet: this request waits for the read
        beat(db, registered_worker, "second-worker")
        seen.append(ids(await view.get()))  # young: cached, no read
        reads_while_young = view.reads_sent
        await asyncio.sleep(MAX_AGE_S * 0.6)
        seen.append(ids(await view.get()))  # past half: still cached, a read starts
        await asyncio.sleep(0.1)  # the background read lands
        reads_past_half = view.reads_sent
        seen.append(ids(await view.get()))  # young again: the background read's view
        db.delete(worker_key("second-worker"))  # that worker is gone
        await asyncio.sleep(MAX_AGE_S * 1.2)
        seen.append(ids(await view.get()))  # past the max age: this request waits again
        return seen, reads_while_young, reads_past_half, view.reads_sent

    seen, reads_while_young, reads_past_half, reads = with_view(body)
    first, both = ["idle-worker"], ["idle-worker", "second-worker"]
    assert seen == [first, first, first, both, first]
    assert (reads_while_young, reads_past_half, reads) == (1, 2, 3)


def test_concurrent_requests_share_one_read_that_a_departing_request_does_not_cancel(
    db: redis.Redis, registered_worker: WorkerInfo
) -> None:
    async def body(view: FleetView):
        leaver = asyncio.create_task(view.get())
        await asyncio.sleep(0)  # the leaver's read is in flight
        others = asyncio.gather(*(view.get() for _ in range(7)))
        await asyncio.sleep(0)
        leaver.cancel()
        fleets = await others
        return [ids(f) for f in fleets], leaver.cancelled(), view.reads_sent

    fleets, left, reads = with_view(body)
    assert fleets == [["idle-worker"]] * 7 and left
    assert reads == 1


def test_fresh_reads_at_once_and_a_failed_read_reaches_the_request_that_waits_for_it() -> None:
    async def body(view: FleetView):
        with pytest.raises(RedisConnectionError):
            await view.get()
        with pytest.raises(RedisConnectionError):
            await view.get(fresh=True)
        return view.reads_sent

    unreachable = f"redis://127.0.0.1:{free_port()}/0"  # a free port: no Redis listens there
    assert with_view(body, url=unreachable) == 2
