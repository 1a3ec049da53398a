"""The protocol routes in-process against a real Redis: OpenAI's error object on the OpenAI
routes only, a 504 naming the job where a protocol has no 202, the served schema's new routes,
and the ``webhook`` and ``preview`` fields of ``POST /generate`` reaching the job."""

from __future__ import annotations

import base64
import threading

import jsonschema
import pytest
import redis
from fastapi.testclient import TestClient

from olss_core.keys import job_key, webhooks_stream
from olss_core.protocol import JobRecord, ScheduleInfo, WorkerInfo, now
from tests.support.schedules import shipped_name
from tests.support.thread_worker import finish, lifecycle
from workers.heartbeat import Heartbeat

SECRET = "whsec_" + base64.b64encode(b"gateway tests' webhook secret!!!").decode()


def record(db: redis.Redis, job_id: str) -> JobRecord:
    return JobRecord.from_hash(db.hgetall(job_key(job_id)))


def test_openai_routes_answer_openais_error_object_and_others_theirs(make_client) -> None:
    client = make_client(api_keys=["k1"])
    missing_key = client.post("/v1/images/generations", json={"prompt": "x"})
    assert missing_key.status_code == 401
    assert missing_key.json() == {"error": {
        "message": "missing or wrong API key: send 'Authorization: Bearer <key>'",
        "type": "authentication_error", "param": None, "code": "unauthorized",
    }}
    wrong_method = client.get("/v1/images/generations", headers={"Authorization": "Bearer k1"})
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert client.post("/generate", json={"prompt": "x"}).json()["error_type"] == "unauthorized"
    assert client.get("/sdapi/v1/options").json()["error_type"] == "unauthorized"


def test_a_bad_field_is_a_400_naming_the_openai_parameter(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    response = client.post("/v1/images/generations", json={"prompt": "x", "n": 0})
    assert response.status_code == 400
    error = response.json()["error"]
    assert (error["type"], error["param"], error["code"]) == (
        "invalid_request_error", "n", "validation_error")
    too_wide = client.post("/v1/images/generations", json={"prompt": "x", "size": "512x512"})
    assert too_wide.status_code == 400 and too_wide.json()["error"]["param"] == "size"
    assert too_wide.json()["error"]["message"].startswith("size: must be between")


@pytest.mark.parametrize("path, body", [
    ("/v1/images/generations", {"prompt": "x"}),
    ("/sdapi/v1/txt2img", {"prompt": "x", "sampler_name": "OLSS", "steps": 5, "cfg_scale": 7.5}),
])
def test_a_job_still_running_after_the_sync_wait_is_a_504_naming_it(
    make_client, registered_worker: WorkerInfo, db: redis.Redis, path: str, body: dict
) -> None:
    client = make_client(sync_timeout_s=0.3)
    response = client.post(path, json=body)
    assert response.status_code == 504
    text = response.text
    job_id = text.split("job ")[1].split(" ")[0]
    assert record(db, job_id).status == "queued"  # the job goes on
    if path.startswith("/v1/"):
        assert response.headers["x-should-retry"] == "false"  # a retry would only wait again


def test_openai_b64_reply_from_a_finished_job(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    thread = threading.Thread(target=finish, args=(lifecycle(db),))
    thread.start()
    response = client.post("/v1/images/generations", json={
        "prompt": "x", "n": 2, "response_format": "b64_json", "seed": 9, "size": "32x32"})
    thread.join()
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"created", "data", "output_format", "size"}
    assert [set(item) for item in body["data"]] == [{"b64_json"}, {"b64_json"}]
    assert base64.b64decode(body["data"][0]["b64_json"])[:8] == b"\x89PNG\r\n\x1a\n"


def test_webhook_and_preview_reach_the_job(
    make_client, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    client = make_client(webhook_secret=SECRET)
    response = client.post(
        "/generate", headers={"Prefer": "respond-async"},
        json={"prompt": "x", "webhook": "https://hooks.example.com/olss",
              "webhook_events_filter": ["completed"], "preview": 2},
    )
    assert response.status_code == 202, response.text
    job = record(db, response.json()["id"])
    assert job.spec.preview_every == 2
    assert job.webhook is not None and job.webhook.url == "https://hooks.example.com/olss"
    assert job.webhook.events == ("completed",)
    assert job.webhook.base_url == "http://testserver/"
    (entry,) = db.xrange(webhooks_stream(registered_worker.model_key))
    assert entry[1] == {"job_id": job.id}  # registered in the step that made the job
    plain = client.post("/generate", headers={"Prefer": "respond-async"},
                        json={"prompt": "x", "preview": True})
    assert record(db, plain.json()["id"]).spec.preview_every == 1
    assert len(db.xrange(webhooks_stream(registered_worker.model_key))) == 1


@pytest.mark.parametrize("preview", [0, -1, "yes", 1.5])
def test_a_bad_preview_is_a_422(
    client: TestClient, registered_worker: WorkerInfo, preview: object
) -> None:
    response = client.post("/generate", json={"prompt": "x", "preview": preview})
    assert response.status_code == 422 and response.json()["error"].startswith("preview")


def test_the_schema_has_the_protocol_routes_with_valid_examples(
    make_client, db: redis.Redis
) -> None:
    """The examples are for ``make run``'s deployment: olss-digits, 16x16."""
    five_steps = shipped_name("olss-digits", 5, 4.0)
    digits = WorkerInfo(
        worker_id="digits", model="olss-digits", model_key="olss-digits", device="cpu",
        schedules=[ScheduleInfo(name=five_steps, steps=5, guidance_scale=4.0)],
        default_schedule=five_steps, default_steps=25, default_guidance_scale=4.0,
        schedulers=["olss", "ddim"], width=16, height=16, max_batch_size=8, metrics_port=0,
        pid=0, host="test", started_at=now(), version="test",
    )
    Heartbeat(db, digits, ttl_s=60, period_s=60).beat()
    document = make_client().get("/openapi.json").json()
    for path in ("/v1/images/generations", "/v1/models", "/sdapi/v1/txt2img",
                 "/sdapi/v1/progress", "/sdapi/v1/interrupt", "/signed/jobs/{job_id}/images/"
                 "{index}"):
        assert path in document["paths"], path
    schemas = document["components"]["schemas"]
    request = document["paths"]["/v1/images/generations"]["post"]["requestBody"]["content"]
    for example in request["application/json"]["examples"].values():
        jsonschema.validate(example["value"], schemas["ImageGenerationRequest"])
    a1111 = document["paths"]["/sdapi/v1/txt2img"]["post"]["requestBody"]["content"]
    for example in a1111["application/json"]["examples"].values():
        jsonschema.validate(example["value"], schemas["Txt2ImgRequest"])
    generate = document["paths"]["/generate"]["post"]["requestBody"]["content"]
    preview = generate["application/json"]["examples"]["step previews"]["value"]
    jsonschema.validate(preview, schemas["GenerateRequest"])
    assert "webhook" not in schemas["GenerateRequest"]["anyOf"][0]["properties"]
    with_hooks = make_client(webhook_secret=SECRET).get("/openapi.json").json()
    assert "webhook" in with_hooks["components"]["schemas"]["GenerateRequest"]["anyOf"][0][
        "properties"]


def test_a1111_basic_auth_takes_the_key_as_password(make_client) -> None:
    client = make_client(api_keys=["k1"])
    assert client.get("/sdapi/v1/scripts", auth=("anyone", "k1")).status_code == 200
    assert client.get("/sdapi/v1/scripts", auth=("anyone", "k2")).status_code == 401
    assert client.get("/v1/models", auth=("anyone", "k1")).status_code == 401  # bearer only
