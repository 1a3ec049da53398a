"""Step previews end to end: a job that asks for them gets a small WebP of its latents in its
SSE ``step`` events (followed with ``httpx-sse``), on the steps it asked for and never the last;
a job that did not ask, in the same batch or alone, gets none."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest
from httpx_sse import connect_sse
from PIL import Image

from tests.e2e.conftest import Stack
from tests.support.jobs import submit, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture()
def ready(stack: Stack) -> Stack:
    """The stack once its worker is ready (warmed up), not only alive."""
    wait_for(lambda: stack.http.get("/readyz").status_code == 200, 120, "a ready worker")
    return stack


def step_events(http: httpx.Client, job_id: str) -> list[dict]:
    with connect_sse(http, "GET", f"/jobs/{job_id}/events") as source:
        events = [json.loads(event.data) for event in source.iter_sse()]
    assert events[-1]["type"] == "finished" and events[-1]["status"] == "succeeded"
    return [event for event in events if event["type"] == "step"]


def test_a_job_asking_for_previews_gets_them_in_its_step_events(ready: Stack) -> None:
    job_id = submit(ready.http, prompt="a red square", seed=1, steps=5, preview=True)
    steps = step_events(ready.http, job_id)
    assert [event["step"] for event in steps] == [1, 2, 3, 4, 5]
    assert all("preview" in event for event in steps[:-1]) and "preview" not in steps[-1]
    for event in steps[:-1]:
        preview = event["preview"]
        assert preview["content_type"] == "image/webp"
        with Image.open(io.BytesIO(base64.b64decode(preview["data_base64"]))) as image:
            assert image.format == "WEBP"
            assert image.size == (preview["width"], preview["height"]) == (32, 32)
        assert len(preview["data_base64"]) < 4096  # small: events stay small


def test_previews_every_n_steps_and_none_for_jobs_that_did_not_ask(ready: Stack) -> None:
    every_second = submit(ready.http, prompt="a", seed=2, steps=5, preview=2)
    plain = submit(ready.http, prompt="b", seed=3, steps=5)
    with_preview = [e["step"] for e in step_events(ready.http, every_second) if "preview" in e]
    assert with_preview == [2, 4]
    assert not any("preview" in event for event in step_events(ready.http, plain))
