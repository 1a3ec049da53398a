"""Items 11 and 20: auth that cannot turn itself off, jobs private to their key, one access line
per request (JSON with ``OLSS_LOG_FORMAT=json``), and no secret or prompt in the logs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from tests.reliability.conftest import RedisServer, client
from tests.support.processes import REPO_ROOT, Gateway, service_env

KEY_A, KEY_B = "alpha-secret-key-1", "beta-secret-key-2"
PROMPT = "a secret prompt nobody may log"


@pytest.mark.parametrize("keys", [",", " ", " , "])
def test_a_key_list_of_only_separators_stops_the_gateway(
    redis_server: RedisServer, keys: str
) -> None:
    env = service_env(redis_server.url(), api_keys=keys)
    result = subprocess.run([sys.executable, "-m", "olss_cli", "gateway", "--port", "0"],
                            env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0
    assert "OLSS_API_KEYS" in result.stderr and "holds no key" in result.stderr


def test_jobs_are_private_and_logs_hold_no_secret(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway(api_keys=f"{KEY_A},{KEY_B}", log_level="debug", log_format="json")
    alice = {"Authorization": f"Bearer {KEY_A}"}
    bob = {"Authorization": f"Bearer {KEY_B}"}
    with client(server) as http:
        job_id = http.post("/generate", json={"prompt": PROMPT},
                           headers={**alice, "Prefer": "respond-async"}).json()["id"]
        others = [http.get(f"/jobs/{job_id}", headers=bob).status_code,
                  http.delete(f"/jobs/{job_id}", headers=bob).status_code,
                  http.get(f"/jobs/{job_id}/events", headers=bob).status_code]
        mine = http.get(f"/jobs/{job_id}", headers=alice).status_code
        http.get(f"/v1/info?api_key={KEY_B}&token={KEY_A}", headers=alice)
        http.get("/v1/info", headers={"Authorization": "Bearer wrong-key-xyz"})
    time.sleep(0.2)
    log = server.log()
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "olss.access"]
    print(f"\nother key: {others}; own key: {mine}; {len(lines)} JSON log lines, "
          f"{len(access)} access lines; secrets in the log: "
          f"{sum(log.count(s) for s in (KEY_A, KEY_B, 'wrong-key-xyz'))}")
    assert others == [404, 404, 404] and mine == 200
    assert KEY_A not in log and KEY_B not in log and "wrong-key-xyz" not in log
    assert PROMPT not in log
    generate = next(line for line in access if line["route"] == "/generate")
    assert (generate["method"], generate["status"], generate["job_id"]) == ("POST", 202, job_id)
    assert generate["duration_ms"] > 0
    assert {line["route"] for line in access} >= {"/generate", "/jobs/{job_id}", "/v1/info"}


def test_prompts_are_logged_only_when_asked(
    redis_server: RedisServer, idle_worker: Callable, gateway: Callable[..., Gateway]
) -> None:
    idle_worker()
    server = gateway(log_prompts="true")
    httpx.post(f"{server.url}/generate", json={"prompt": PROMPT},
               headers={"Prefer": "respond-async"})
    time.sleep(0.2)
    assert PROMPT in server.log()


def test_every_logger_is_redacted_and_json_lines_parse(capsys: pytest.CaptureFixture) -> None:
    """The one handler ``configure_logging`` installs redacts whatever library logged."""
    import logging

    from olss_core.logging_setup import configure_logging
    from olss_core.settings import Settings

    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        configure_logging(Settings(api_keys=[KEY_A], log_level="debug", log_format="json"))
        logging.getLogger("uvicorn.access").info('GET /v1/info?api_key=%s HTTP/1.1', KEY_A)
        logging.getLogger("httpx").debug("Authorization: Bearer %s", KEY_B)
        logging.getLogger("redis").debug("connecting to redis://:hunter2@db:6379/0")
        logging.getLogger("app").info("done", extra={"job_id": "j1", "note": f"k={KEY_A}"})
    finally:
        root.handlers[:], root.level = saved
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    text = json.dumps(lines)
    assert KEY_A not in text and KEY_B not in text and "hunter2" not in text
    assert lines[0]["message"] == "GET /v1/info?api_key=*** HTTP/1.1"
    assert (lines[3]["job_id"], lines[3]["note"]) == ("j1", "k=***")
    assert {line["level"] for line in lines} == {"info", "debug"}
