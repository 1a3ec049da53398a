"""The served OpenAPI schema matches the service: errors, security, constraints, examples, and
/docs works offline."""

from __future__ import annotations

import re

import jsonschema
import pytest
import redis
from fastapi.testclient import TestClient

from olss_core.protocol import WorkerInfo
from workers.heartbeat import Heartbeat

ERROR_REF = "#/components/schemas/ErrorBody"
OPENAI_ERROR_REF = "#/components/schemas/OpenAIErrorBody"


def served(client: TestClient) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


def operations(document: dict):
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


def test_every_error_status_declares_the_error_body(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    document = served(client)
    for name, operation in operations(document):
        openai = name.split()[1].startswith(("/v1/images/", "/v1/models"))
        for status, response in operation["responses"].items():
            if int(status) >= 400:
                schema = response["content"]["application/json"]["schema"]
                assert schema == {"$ref": OPENAI_ERROR_REF if openai else ERROR_REF}, (
                    name, status)
    generate = document["paths"]["/generate"]["post"]["responses"]
    assert sorted(generate) == [
        "200", "202", "400", "401", "404", "406", "409", "413", "422", "429", "500", "503",
    ]
    assert "503" in document["paths"]["/jobs/{job_id}"]["get"]["responses"]
    assert "429" in document["paths"]["/jobs/{job_id}/events"]["get"]["responses"]


def test_image_responses_have_schemas(client: TestClient, registered_worker: WorkerInfo) -> None:
    document = served(client)
    for path, method in (("/generate", "post"), ("/jobs/{job_id}/images/{index}", "get")):
        content = document["paths"][path][method]["responses"]["200"]["content"]
        for media_type in ("image/png", "image/jpeg", "image/webp"):
            assert content[media_type]["schema"] == {"type": "string", "format": "binary"}


def test_the_security_scheme_appears_only_with_keys(
    make_client, registered_worker: WorkerInfo
) -> None:
    open_document = served(make_client())
    assert "securitySchemes" not in open_document["components"]
    assert all("security" not in op for _, op in operations(open_document))
    keyed = served(make_client(api_keys=["k1"]))
    assert keyed["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    assert keyed["paths"]["/generate"]["post"]["security"] == [{"bearer": []}]
    assert "security" not in keyed["paths"]["/healthz"]["get"]


def test_request_constraints_are_in_the_schema(
    client: TestClient, registered_worker: WorkerInfo
) -> None:
    variants = served(client)["components"]["schemas"]["GenerateRequest"]["anyOf"]
    olss, samplers = variants
    width = olss["properties"]["width"]["anyOf"][0]
    assert (width["minimum"], width["maximum"], width["multipleOf"]) == (16, 64, 8)
    assert olss["properties"]["steps"]["anyOf"][0]["enum"] == [4, 5]
    assert olss["properties"]["model"]["anyOf"][0]["enum"] == ["tiny-sd"]
    assert olss["properties"]["prompt"]["maxLength"] == 1000
    assert olss["properties"]["num_images"]["maximum"] == 4
    assert samplers["required"] == ["prompt", "scheduler"]
    assert "olss" not in samplers["properties"]["scheduler"]["enum"]
    assert samplers["properties"]["steps"]["anyOf"][0]["maximum"] == 150


def test_several_models_each_get_their_variants_and_need_a_name(
    client: TestClient, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    other = registered_worker.model_copy(update={
        "worker_id": "digits", "model": "olss-digits", "model_key": "olss-digits",
        "width": 16, "height": 16,
    })
    Heartbeat(db, other, ttl_s=60, period_s=60, on_beat=lambda: None).beat()
    variants = served(client)["components"]["schemas"]["GenerateRequest"]["anyOf"]
    assert len(variants) == 4
    assert all("model" in v["required"] for v in variants)
    digits = [v for v in variants if v["properties"]["model"]["anyOf"][0]["enum"] == [
        "olss-digits"]]
    assert {v["properties"]["width"]["anyOf"][0]["maximum"] for v in digits} == {32}


@pytest.mark.parametrize("name", ["default model", "two images"])
def test_request_examples_are_valid_and_accepted(
    client: TestClient, registered_worker: WorkerInfo, name: str
) -> None:
    document = served(client)
    body = document["paths"]["/generate"]["post"]["requestBody"]["content"]["application/json"]
    example = body["examples"][name]["value"]
    jsonschema.validate(example, document["components"]["schemas"]["GenerateRequest"])
    response = client.post("/generate", json=example, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text


def test_docs_load_offline(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert re.findall(r"(?:https?:)?//[\w.-]+", page.text) == []
    for asset in re.findall(r'(?:href|src)="([^"]+)"', page.text):
        assert client.get(asset).status_code == 200, asset
    assert "url: '/openapi.json'" in page.text
    redoc = client.get("/redoc")
    assert re.findall(r"(?:https?:)?//[\w.-]+", redoc.text) == []
    for asset in re.findall(r'(?:href|src)="([^"]+)"', redoc.text):
        assert client.get(asset).status_code == 200, asset
