"""The gateway's /metrics: the declared names, route templates as labels, sampled gauges."""

from __future__ import annotations

from fastapi.testclient import TestClient

from olss_core.protocol import WorkerInfo


def test_metrics_use_route_templates_and_sample_queue_depth(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    for _ in range(3):
        client.post("/generate", json={"prompt": "x"}, headers={"Prefer": "respond-async"})
    client.get("/jobs/0123456789abcdef0123456789abcdef")
    text = client.get("/metrics").text
    bucket = 'olss_request_duration_seconds_bucket{endpoint="/generate",le="0.25",status="202"}'
    assert bucket in text
    assert 'endpoint="/jobs/{job_id}"' in text and "0123456789abcdef" not in text
    model = registered_worker.model_key
    assert f'olss_queue_depth{{model="{model}"}} 3.0' in text
    assert f'olss_workers{{model="{model}"}} 1.0' in text
    assert f'olss_fleet_workers{{model="{model}",state="ready"}} 1.0' in text
    assert "_created" not in text
