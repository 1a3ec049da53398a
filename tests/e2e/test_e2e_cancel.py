"""Cancel: a queued job never runs; a running job stops at the next step boundary."""

from __future__ import annotations

import pytest

from tests.support.jobs import submit, wait_for, wait_status

pytestmark = pytest.mark.e2e

SLOW = {"scheduler": "ddim", "steps": 150}  # minutes with the stack's per-step delay


def test_cancel_a_running_job_stops_it_at_a_step_boundary(stack) -> None:
    http = stack.http
    job_id = submit(http, prompt="long", **SLOW)
    wait_for(lambda: http.get(f"/jobs/{job_id}").json()["progress"]["step"] >= 2,
             what="the job to make progress")
    response = http.delete(f"/jobs/{job_id}")
    assert (response.status_code, response.json()["status"]) == (202, "running")
    view = wait_status(http, job_id, "canceled", timeout_s=30)
    assert view["progress"]["step"] < SLOW["steps"]
    events = http.get(f"/jobs/{job_id}/events").text
    last_data = [line for line in events.splitlines() if line.startswith("data:")][-1]
    assert last_data.endswith('"status":"canceled"}')
    assert http.get(f"/jobs/{job_id}/images/0").status_code == 404


def test_cancel_a_queued_job_and_it_never_runs(stack) -> None:
    http = stack.http
    running = submit(http, prompt="long", **SLOW)
    wait_status(http, running, "running")
    queued = submit(http, prompt="never")
    assert http.get(f"/jobs/{queued}").json()["queue_position"] == 0
    assert http.delete(f"/jobs/{queued}").status_code == 200
    http.delete(f"/jobs/{running}")
    wait_status(http, running, "canceled", timeout_s=30)
    after = submit(http, prompt="after")  # the worker has moved past the canceled entry
    wait_status(http, after, "succeeded")
    view = http.get(f"/jobs/{queued}").json()
    assert (view["status"], view["attempts"], view["started_at"]) == ("canceled", 0, None)
    assert "event: started" not in http.get(f"/jobs/{queued}/events").text
