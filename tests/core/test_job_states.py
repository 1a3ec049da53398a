"""The job state machine: every status change the gateway and the worker make is a row of
``olss_core.job_states.TRANSITIONS``, and the Lua scripts hold no status of their own."""

from __future__ import annotations

import asyncio
import inspect
import re
import typing

import pytest
import redis

from app.queue import JobQueue
from olss_core import job_scripts
from olss_core.job_states import TRANSITIONS, JobStatus, Transition, allowed
from olss_core.keys import job_key
from olss_core.protocol import JobRecord, JobSpec, Timings
from olss_core.redis_clients import RedisTarget, async_client
from olss_core.samplers import SCHEDULER_NAMES, SchedulerName
from olss_core.settings import Settings
from tests.support.redis_db import unit_settings
from workers.lifecycle import ClaimedJob, JobLifecycle, JobResult, Start

MODEL = "state-model"


@pytest.fixture()
def settings() -> Settings:
    return unit_settings(max_attempts=2)


def status(db: redis.Redis, job_id: str) -> JobStatus | None:
    value = db.hget(job_key(job_id), "status")
    return None if value is None else JobStatus(value)


def run(coroutine_factory: typing.Callable[[JobQueue], typing.Awaitable[object]],
        settings: Settings) -> object:
    async def main() -> object:
        client = async_client(RedisTarget.of(settings), max_connections=4, pool_timeout_s=5)
        try:
            return await coroutine_factory(JobQueue(client, settings))
        finally:
            await client.aclose()

    return asyncio.run(main())


def enqueue(settings: Settings) -> str:
    spec = JobSpec(model=MODEL, prompt="x", width=32, height=32, steps=5, guidance_scale=7.5,
                   seed=1)
    return run(lambda queue: queue.enqueue(spec), settings).job_id  # type: ignore[attr-defined]


class Observed:
    """Records (transition, before, after) for each operation and checks it against the table."""

    def __init__(self, db: redis.Redis) -> None:
        self.db = db
        self.seen: list[tuple[Transition, JobStatus | None, JobStatus | None]] = []

    def __call__(
        self, transition: Transition, job_id: str | None, action: typing.Callable[[], object]
    ) -> object:
        """Run ``action`` on ``job_id`` (``None``: the action makes the job, returning its id)."""
        before = None if job_id is None else status(self.db, job_id)
        result = action()
        after = status(self.db, job_id or str(result))
        self.seen.append((transition, before, after))
        assert allowed(transition, before), f"{transition} from {before} is not in the table"
        assert after is TRANSITIONS[transition].target, f"{transition} ended in {after}"
        return result


def started(lifecycle: JobLifecycle) -> ClaimedJob:
    (job,) = lifecycle.load(lifecycle.read_new(8, None))
    ((outcome, job),) = lifecycle.start([job])
    assert outcome is Start.RUN
    return job


def test_every_transition_the_services_make_is_in_the_table(
    db: redis.Redis, settings: Settings
) -> None:
    observe = Observed(db)
    worker = JobLifecycle(db, settings, MODEL, "w")
    worker.ensure_group()
    timings = Timings(queue=0, inference=0, total=0, encode=0, denoise=0, decode=0, batch_size=1)

    done = str(observe(Transition.ENQUEUE, None, lambda: enqueue(settings)))
    job = observe(Transition.START, done, lambda: started(worker))
    observe(Transition.SUCCEED, done,
            lambda: worker.succeed([JobResult(job, [b"png"], "s", timings)]))

    canceled_queued = enqueue(settings)
    observe(Transition.CANCEL, canceled_queued,
            lambda: run(lambda queue: queue.cancel(canceled_queued), settings))
    worker.load(worker.read_new(8, None))  # the canceled job's entry, acknowledged at start

    retried = enqueue(settings)
    job = started(worker)
    observe(Transition.RETRY, retried, lambda: worker.fail(job, RuntimeError("boom")))
    job = started(worker)
    observe(Transition.DEAD_LETTER, retried, lambda: worker.fail(job, RuntimeError("boom")))

    canceled_running = enqueue(settings)
    job = started(worker)
    assert run(lambda queue: queue.cancel(canceled_running), settings) is JobStatus.RUNNING
    observe(Transition.CANCEL, canceled_running, lambda: worker.finish_canceled(job))

    assert {transition for transition, _, _ in observe.seen} == set(Transition)


def test_a_finished_job_does_not_start_again(db: redis.Redis, settings: Settings) -> None:
    worker = JobLifecycle(db, settings, MODEL, "w")
    worker.ensure_group()
    job_id = enqueue(settings)
    run(lambda queue: queue.cancel(job_id), settings)
    record = JobRecord.from_hash(db.hgetall(job_key(job_id)))
    assert not allowed(Transition.START, record.status)
    ((outcome, _),) = worker.start([ClaimedJob("0-1", record)])
    assert outcome is Start.SKIP and status(db, job_id) is JobStatus.CANCELED


def test_the_lua_scripts_spell_no_status_of_their_own() -> None:
    """Statuses reach the scripts from JobStatus; the templates name none literally."""
    quoted = re.compile("'({})'".format("|".join(status.value for status in JobStatus)))
    literal = quoted.findall(inspect.getsource(job_scripts))
    assert literal == [], f"job_scripts.py spells statuses itself: {literal}"
    assert quoted.search(job_scripts.CANCEL) and quoted.search(job_scripts.START)


def test_the_request_type_lists_exactly_the_sampler_table() -> None:
    assert typing.get_args(SchedulerName) == SCHEDULER_NAMES
