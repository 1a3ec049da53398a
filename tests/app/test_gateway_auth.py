"""API keys: a job is visible only to the key that made it; keys never turn auth off silently."""

from __future__ import annotations

import pytest
import redis
from fastapi.testclient import TestClient

from olss_core.keys import job_key
from olss_core.protocol import JobRecord, WorkerInfo
from olss_core.settings import ConfigError, load_settings

ALICE = {"Authorization": "Bearer k1", "Prefer": "respond-async"}
BOB = {"Authorization": "Bearer k2"}


def test_a_job_is_404_to_every_other_key(
    make_client, registered_worker: WorkerInfo, db: redis.Redis
) -> None:
    client: TestClient = make_client(api_keys=["k1", "k2"])
    job_id = client.post("/generate", json={"prompt": "x"}, headers=ALICE).json()["id"]
    owner = JobRecord.from_hash(db.hgetall(job_key(job_id))).owner
    assert owner and "k1" not in owner  # a digest, never the key
    for method, path in [("GET", ""), ("DELETE", ""), ("GET", "/images/0"), ("GET", "/events")]:
        response = client.request(method, f"/jobs/{job_id}{path}", headers=BOB)
        assert (response.status_code, response.json()["error_type"]) == (404, "not_found")
    assert client.get(f"/jobs/{job_id}", headers=ALICE).json()["status"] == "queued"
    assert client.delete(f"/jobs/{job_id}", headers=ALICE).status_code == 200


def test_an_idempotency_key_is_scoped_to_the_api_key(
    make_client, registered_worker: WorkerInfo
) -> None:
    client: TestClient = make_client(api_keys=["k1", "k2"])
    same = {"Idempotency-Key": "order-1", "Prefer": "respond-async"}
    first = client.post("/generate", json={"prompt": "x"}, headers={**ALICE, **same})
    second = client.post("/generate", json={"prompt": "x"}, headers={**BOB, **same})
    assert first.json()["id"] != second.json()["id"]


@pytest.mark.parametrize("value", [",", " ", " , ,"])
def test_a_key_list_of_only_separators_stops_start_up(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("OLSS_API_KEYS", value)
    with pytest.raises(ConfigError, match=r"OLSS_API_KEYS: .*holds no key"):
        load_settings()


def test_an_empty_key_list_means_no_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OLSS_API_KEYS", "")
    assert load_settings().api_keys == []
