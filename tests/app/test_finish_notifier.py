"""The finish notifier on a real Redis: a notice that comes before its waiter still ends the wait
of a job the caller has just made, without reading the job's status (``known_unfinished``)."""

from __future__ import annotations

import asyncio
import time

from app.notifier import POLL_S, FinishNotifier
from app.throughput import FinishRate
from olss_core.keys import FINISHED_CHANNEL, finished_notice, new_job_id
from olss_core.redis_clients import async_client
from tests.support.redis_db import unit_settings


def run_notifier(body):
    """Run ``body(notifier, client)`` with a started notifier."""

    async def main():
        client = async_client(unit_settings().redis_url, 4, 5.0)
        notifier = FinishNotifier(client, FinishRate())
        notifier.start()
        try:
            return await body(notifier, client)
        finally:
            await notifier.stop()
            await client.aclose()

    return asyncio.run(main())


async def heard(notifier: FinishNotifier, job_id: str) -> None:
    deadline = time.monotonic() + 5
    while not notifier.finished_recently(job_id):
        assert time.monotonic() < deadline, "the notice never arrived"
        await asyncio.sleep(0.01)


def test_a_notice_before_its_waiter_ends_a_new_jobs_wait_at_once() -> None:
    early, silent = new_job_id("tiny-sd"), new_job_id("tiny-sd")
    status_reads: list[str] = []

    def never_finished(job_id: str):
        async def finished() -> bool:
            status_reads.append(job_id)
            return False

        return finished

    async def body(notifier: FinishNotifier, client):
        await asyncio.sleep(0.2)  # subscribed
        await client.publish(FINISHED_CHANNEL, finished_notice([early]))
        await heard(notifier, early)
        started = time.monotonic()
        early_wait = await notifier.wait(early, never_finished(early), timeout_s=3,
                                         known_unfinished=True)
        early_s = time.monotonic() - started
        silent_wait = await notifier.wait(silent, never_finished(silent), timeout_s=0.3,
                                          known_unfinished=True)
        return early_wait, early_s, silent_wait

    early_wait, early_s, silent_wait = run_notifier(body)
    assert early_wait is True and early_s < POLL_S / 2
    assert silent_wait is False
    assert early not in status_reads  # the notifier's memory answered, not Redis


def test_without_known_unfinished_the_first_check_reads_the_status() -> None:
    job_id = new_job_id("tiny-sd")
    reads: list[str] = []

    async def finished() -> bool:
        reads.append(job_id)
        return True

    async def body(notifier: FinishNotifier, _client):
        return await notifier.wait(job_id, finished, timeout_s=3)

    assert run_notifier(body) is True and reads == [job_id]
