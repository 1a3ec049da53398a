"""Worker crashes and shutdown: a job survives SIGKILL mid-job; SIGTERM finishes the job.

The stack's worker and a second one serve the model; whichever runs the job is killed.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from olss_core.keys import job_key, worker_key
from olss_core.protocol import JobRecord
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.processes import Worker, spawn_worker

pytestmark = pytest.mark.e2e

JOB = {"prompt": "survive", "scheduler": "ddim", "steps": 24}


@pytest.fixture(scope="module")
def workers(session_stack) -> Iterator[dict[str, Worker]]:
    """The stack's worker and one more, by worker id."""
    extra = spawn_worker(session_stack.env).wait_ready()
    try:
        yield {w.worker_id: w for w in (session_stack.worker, extra) if w.alive()}
    finally:
        extra.stop()


def running_on(stack, job_id: str) -> str:
    """The id of the worker running ``job_id``."""
    wait_status(stack.http, job_id, "running")
    return JobRecord.from_hash(stack.db.hgetall(job_key(job_id))).worker or ""


def test_a_job_survives_its_worker_being_killed_mid_job(session_stack, workers) -> None:
    stack = session_stack
    job_id = submit(stack.http, **JOB)
    victim = workers.pop(running_on(stack, job_id))
    wait_for(lambda: stack.http.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 1)
    victim.kill()
    view = wait_status(stack.http, job_id, "succeeded", timeout_s=90)
    assert view["attempts"] == 2
    (survivor,) = workers
    assert JobRecord.from_hash(stack.db.hgetall(job_key(job_id))).worker == survivor


def test_sigterm_lets_the_worker_finish_its_job_and_exit_cleanly(session_stack, workers) -> None:
    stack = session_stack
    job_id = submit(stack.http, **JOB)
    worker = workers[running_on(stack, job_id)]
    worker.process.terminate()
    assert worker.process.wait(timeout=90) == 0
    assert wait_status(stack.http, job_id, "succeeded")["attempts"] == 1
    assert stack.db.get(worker_key(worker.worker_id)) is None
