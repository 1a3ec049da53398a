"""``olss keys``: the jobs stream and consumer group a model's workers read, printed as the
metadata of KEDA's redis-streams trigger (deploy/k8s), without loading torch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from olss_core.keys import GROUP, jobs_stream
from tests.support.processes import REPO_ROOT, service_env, start_worker
from tests.support.redis_db import UNIT_DB, redis_url
from workers.embedded_model import DEFAULT_MODEL

HUB_ID = "stable-diffusion-v1-5/stable-diffusion-v1-5"
TORCH_FREE_CHECK = """
import contextlib, io, sys
from olss_cli.main import main
with contextlib.redirect_stdout(io.StringIO()):
    main(["keys", "--model", "some/model"])
print(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules))
"""


def olss_keys(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``olss keys ARGS`` in a subprocess, its output read as YAML."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("OLSS_")}
    done = subprocess.run(
        [sys.executable, "-m", "olss_cli", "keys", *args], env={**base, **(env or {})},
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.mark.e2e
def test_keys_names_the_stream_and_group_a_real_worker_reads(
    db: redis.Redis, tiny_pipeline_dir: Path, tmp_path: Path
) -> None:
    """A worker for a local folder creates its stream and group; `olss keys` names both."""
    env = service_env(
        redis_url(UNIT_DB), schedule_dir=tmp_path / "schedules", model=tiny_pipeline_dir,
        cache_dir=tmp_path / "cache", device="cpu", log_level="warning",
    )
    printed = olss_keys("--model", str(tiny_pipeline_dir))
    with start_worker(env) as worker:
        assert worker.info is not None
        assert printed["stream"] == jobs_stream(worker.info.model_key)
        groups = db.xinfo_groups(printed["stream"])
        assert [group["name"] for group in groups] == [printed["consumerGroup"]]


@pytest.mark.parametrize("model", [HUB_ID, DEFAULT_MODEL])
def test_a_hub_id_or_an_embedded_name_is_its_own_key(model: str) -> None:
    assert olss_keys("--model", model) == {"stream": jobs_stream(model), "consumerGroup": GROUP}


def test_keys_defaults_to_olss_model() -> None:
    assert olss_keys(env={"OLSS_MODEL": HUB_ID})["stream"] == jobs_stream(HUB_ID)
    assert olss_keys()["stream"] == jobs_stream(DEFAULT_MODEL)


def test_keys_loads_no_torch() -> None:
    done = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_CHECK], cwd=REPO_ROOT, capture_output=True, text=True,
        timeout=60, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
