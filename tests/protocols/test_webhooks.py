"""Webhooks end to end: a real gateway and worker, real local HTTP receivers, the signature
checked with the ``standardwebhooks`` package. Events arrive signed and filtered; a failing
receiver gets the event on a later attempt; a job completes although its receiver is down; a
gateway restart in the middle of the retries still delivers; private targets are refused."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from standardwebhooks import Webhook

from olss_core.keys import job_key
from olss_core.protocol import JobRecord
from tests.protocols.conftest import WEBHOOK_SECRET, Services, spawn_protocol_gateway
from tests.protocols.webhook_receiver import Received, receiver
from tests.support.jobs import submit, wait_for, wait_status
from tests.support.ports import free_port

pytestmark = pytest.mark.e2e

JOB = {"prompt": "the number 3", "seed": 1}


def verified(received: Received) -> dict:
    """The body, after ``standardwebhooks`` has checked its signature (raises if wrong)."""
    return Webhook(WEBHOOK_SECRET).verify(received.body, received.headers)


def record(services: Services, job_id: str) -> JobRecord:
    return JobRecord.from_hash(services.db.hgetall(job_key(job_id)))


def deliveries(gateway_url: str) -> dict[str, float]:
    text = httpx.get(f"{gateway_url}/metrics").text
    return {sample.labels["outcome"]: sample.value
            for family in text_string_to_metric_families(text)
            if family.name == "olss_webhook_deliveries"
            for sample in family.samples if sample.name.endswith("_total")}


def test_start_and_completed_arrive_signed_and_filtered(services: Services) -> None:
    http = httpx.Client(base_url=services.gateway.url, timeout=30)
    with receiver() as hooks:
        job_id = submit(http, **JOB, webhook=hooks.url,
                        webhook_events_filter=["start", "completed"])
        start, completed = hooks.wait_for(2)
    assert [verified(r)["type"] for r in (start, completed)] == ["job.start", "job.completed"]
    assert verified(start)["data"]["status"] == "running"
    data = verified(completed)["data"]
    assert (data["id"], data["status"], data["seeds"]) == (job_id, "succeeded", [1])
    assert start.headers["webhook-id"] != completed.headers["webhook-id"]
    image = httpx.get(data["images"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    forged = {**completed.headers, "webhook-signature": "v1,AAAA"}
    with pytest.raises(Exception, match="signature"):
        Webhook(WEBHOOK_SECRET).verify(completed.body, forged)


def test_every_event_by_default_output_before_completed(services: Services) -> None:
    http = httpx.Client(base_url=services.gateway.url, timeout=30)
    with receiver() as hooks:
        submit(http, **JOB, webhook=hooks.url)
        got = hooks.wait_for(3)
    assert [verified(r)["type"] for r in got] == ["job.start", "job.output", "job.completed"]


def test_a_receiver_that_fails_twice_gets_the_event_on_the_third_try(services: Services) -> None:
    http = httpx.Client(base_url=services.gateway.url, timeout=30)
    with receiver(script=[500, 503]) as hooks:
        job_id = submit(http, **JOB, webhook=hooks.url, webhook_events_filter=["completed"])
        (delivered,) = hooks.wait_for(1)
    attempts = [r for r in hooks.requests]
    assert [r.status for r in attempts] == [500, 503, 200]
    assert len({r.headers["webhook-id"] for r in attempts}) == 1  # one message, three tries
    assert attempts[1].at - attempts[0].at >= 0.2 and attempts[2].at - attempts[1].at >= 0.4
    assert verified(delivered)["data"]["id"] == job_id
    after = record(services, job_id)
    assert after.webhook_failures == 0 and "attempt 2: HTTP 503" in (after.webhook_error or "")


def test_a_job_completes_when_its_webhook_target_is_down(services: Services) -> None:
    http = httpx.Client(base_url=services.gateway.url, timeout=30)
    before = deliveries(services.gateway.url)
    down = f"http://127.0.0.1:{free_port()}/nobody-listens"
    job_id = submit(http, **JOB, webhook=down, webhook_events_filter=["completed"])
    assert wait_status(http, job_id, "succeeded")["status"] == "succeeded"
    wait_for(lambda: record(services, job_id).webhook_failures == 1, 30, "the event given up")
    view = http.get(f"/jobs/{job_id}").json()
    assert view["webhook_failures"] == 1 and "completed attempt 4:" in view["webhook_error"]
    after = deliveries(services.gateway.url)
    assert after["failed"] - before.get("failed", 0) == 1
    assert after["retried"] - before.get("retried", 0) == 3


def test_a_gateway_restart_mid_retry_still_delivers(services: Services) -> None:
    """The only gateway dies (SIGKILL) while it waits to retry; the one started after it
    claims the delivery once its lease ran out and goes on from the stored attempt."""
    services.gateway.stop()
    gateway = spawn_protocol_gateway(services.env, webhook_retry_base_s=2.0)
    http = httpx.Client(base_url=gateway.url, timeout=30)
    with receiver(script=[500]) as hooks:
        job_id = submit(http, **JOB, webhook=hooks.url, webhook_events_filter=["completed"])
        wait_for(lambda: record(services, job_id).webhook_error, 30, "the first try's failure")
        gateway.kill()  # the first try failed and was noted; the next is 2 s away
        services.gateway = spawn_protocol_gateway(services.env)
        (delivered,) = hooks.wait_for(1)
    assert [r.status for r in hooks.requests] == [500, 200]
    assert verified(delivered)["data"]["id"] == job_id
    assert len({r.headers["webhook-id"] for r in hooks.requests}) == 1
    after = record(services, job_id)
    assert after.webhook_failures == 0 and "completed attempt 1:" in (after.webhook_error or "")


def test_private_targets_are_refused_unless_allowed(services: Services) -> None:
    strict = spawn_protocol_gateway(services.env, webhook_allow_networks="")
    try:
        http = httpx.Client(base_url=strict.url, timeout=30)
        for target in ("http://10.0.0.7/hook", "http://169.254.169.254/latest",
                       "http://[::1]:8080/hook", "http://localhost:9/hook"):
            response = http.post("/generate", json={**JOB, "webhook": target},
                                 headers={"Prefer": "respond-async"})
            assert response.status_code == 422, target
            assert response.json()["error"].startswith("webhook: "), response.text
    finally:
        strict.stop()


def test_without_a_secret_webhooks_are_refused(services: Services) -> None:
    plain = spawn_protocol_gateway(services.env, webhook_secret="")
    try:
        response = httpx.post(f"{plain.url}/generate", json={**JOB, "webhook": "http://x.org/"},
                              headers={"Prefer": "respond-async"})
        assert response.status_code == 422 and "OLSS_WEBHOOK_SECRET" in response.text
    finally:
        plain.stop()
