"""HTTP helpers for tests against a running gateway: submit a job, wait for a state."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx


def wait_for(
    check: Callable[[], object], timeout_s: float = 60.0, what: str = "condition"
) -> object:
    """Poll ``check`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def submit(http: httpx.Client, **body: object) -> str:
    """POST /generate with Prefer: respond-async; the job id."""
    response = http.post("/generate", json=body, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def wait_status(http: httpx.Client, job_id: str, *statuses: str, timeout_s: float = 60) -> dict:
    """GET /jobs/{id} until its status is one of ``statuses``; the job view."""

    def check() -> dict | None:
        view = http.get(f"/jobs/{job_id}").json()
        return view if view["status"] in statuses else None

    return wait_for(check, timeout_s, f"job {job_id} to be {statuses}")  # type: ignore[return-value]
