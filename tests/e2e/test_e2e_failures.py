"""A job that always fails is retried, then dead-lettered; it never fails its batch-mates."""

from __future__ import annotations

import re

import pytest

from olss_core.keys import dead_stream
from tests.e2e.conftest import FAIL_MARKER, STACK_SETTINGS
from tests.support.jobs import submit, wait_status

pytestmark = pytest.mark.e2e


def test_a_failing_job_goes_to_the_dead_letter_stream_after_the_attempt_limit(stack) -> None:
    job_id = submit(stack.http, prompt=f"always {FAIL_MARKER}")
    view = wait_status(stack.http, job_id, "failed")
    assert view["attempts"] == STACK_SETTINGS["max_attempts"]
    assert view["error_type"] == "dead_lettered" and "OLSS_TEST_FAIL_PROMPT" in view["error"]
    dead = stack.db.xrange(dead_stream(stack.worker.info.model_key))
    assert job_id in [fields["job_id"] for _, fields in dead]
    response = stack.http.post("/generate", json={"prompt": f"sync {FAIL_MARKER}"})
    assert (response.status_code, response.json()["error_type"]) == (500, "job_failed")


def test_a_bad_job_does_not_take_its_batch_mates_down(stack) -> None:
    http = stack.http
    blocker = submit(http, prompt="blocker", scheduler="ddim", steps=20)
    wait_status(http, blocker, "running")
    bad = submit(http, prompt=f"bad {FAIL_MARKER}", seed=1)
    good = [submit(http, prompt="good", seed=seed) for seed in (2, 3, 4)]
    for job_id in good:
        assert wait_status(http, job_id, "succeeded", "failed")["status"] == "succeeded"
    assert wait_status(http, bad, "succeeded", "failed")["status"] == "failed"
    # The worker logs the jobs of every batch it splits: the bad job failed a shared batch.
    splits = re.findall(r"batch of \d+ failed .*; splitting jobs (.+)$", stack.worker.log(), re.M)
    shared = [line.split() for line in splits if bad in line.split()]
    assert shared and set(shared[0]) & set(good), splits
