"""End to end with the embedded model: ``POST /generate`` "the number 3" returns a 3.

A real gateway and a real worker started with no ``OLSS_MODEL``, so the worker serves the default
model, ``olss-digits`` with its built-in OLSS schedules (what ``make run`` serves), on their own
Redis database; the digit classifier of ``bench.digits_eval`` reads the returned PNGs. The
schedule each request names is the one a :class:`workers.schedulers.SchedulerBank` over the
built-in schedules for the embedded model's identity builds here.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from bench.digits_eval import classify
from schedules import ScheduleRegistry
from schedules.model_identity import model_identity
from schedules.registry import BUILTIN_DIR, model_key
from tests.support.processes import Gateway, Worker, service_env, spawn_gateway, spawn_worker
from tests.support.redis_db import clean_db, redis_url
from tests.support.schedules import shipped_name
from workers.embedded_model import DEFAULT_MODEL, resolve_model
from workers.results import read_infotext, read_parameters
from workers.schedulers import SchedulerBank, load_model_schedules

pytestmark = pytest.mark.e2e

DIGITS_DB = 13
SEEDS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def shipped_bank() -> SchedulerBank:
    """What a worker of the embedded model serves from the built-in schedules."""
    folder = Path(resolve_model(DEFAULT_MODEL))
    config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    schedules = load_model_schedules(
        ScheduleRegistry(BUILTIN_DIR), model_key(folder), model_identity(folder)
    )
    return SchedulerBank(config, schedules)


@pytest.fixture(scope="module")
def digits_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Gateway, Worker]]:
    """A gateway and a worker for the default model with the built-in schedule registry."""
    with clean_db(DIGITS_DB):
        env = service_env(redis_url(DIGITS_DB), cache_dir=tmp_path_factory.mktemp("digits-cache"))
        gateway, worker = spawn_gateway(env), spawn_worker(env)
        try:
            worker.wait_ready()
            gateway.wait_ready()
            yield gateway, worker
        finally:
            gateway.stop()
            worker.stop()


def test_generate_the_number_3_returns_an_image_read_as_3(digits_stack) -> None:
    gateway, worker = digits_stack
    assert worker.info is not None and worker.info.default_schedule is not None
    assert worker.info.model == "olss-digits"
    assert worker.info.default_schedule == shipped_name("olss-digits", 5, 4.0)
    images = []
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        for seed in SEEDS:
            response = http.post(
                "/generate",
                json={"prompt": "the number 3", "seed": seed},
                headers={"Accept": "image/png"},
            )
            assert response.status_code == 200, response.text
            assert response.headers["content-type"] == "image/png"
            with Image.open(io.BytesIO(response.content)) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    assert images[0].shape == (16, 16, 3)
    predicted = classify(np.stack(images))
    assert (predicted == 3).mean() >= 0.8, predicted


@pytest.mark.parametrize("guidance", [3.0, 4.4, 7.5, 13.0])
def test_any_guidance_gets_the_shipped_schedule_and_says_which(
    digits_stack, shipped_bank, guidance
) -> None:
    """Any guidance in the served range: 200 with OLSS; the JSON and the PNG name the schedule,
    the fit in g between two calibrated scales, or the held-out peer served instead, as the bank
    over the shipped files does; the classifier still reads the digit."""
    gateway, worker = digits_stack
    assert worker.info is not None
    assert [s.name for s in worker.info.schedules] == [s.name for s in shipped_bank.schedules]
    expected, _ = shipped_bank.get("olss", 5, guidance)
    if all(s.guidance_scale != guidance for s in shipped_bank.schedules):  # says how it was made
        assert "fit in g of" in expected, expected
    images = []
    with httpx.Client(base_url=gateway.url, timeout=60) as http:
        for seed in SEEDS:
            response = http.post("/generate", json={
                "prompt": "the number 3", "seed": seed, "guidance_scale": guidance,
            })
            assert response.status_code == 200, response.text
            result = response.json()
            assert (result["scheduler"], result["guidance_scale"]) == ("olss", guidance)
            label = result["schedule"]
            assert label == expected
            png = base64.b64decode(result["images"][0]["data_base64"])
            parameters = read_parameters(png)
            assert (parameters.schedule, parameters.guidance_scale) == (label, guidance)
            assert f"CFG scale: {guidance:g}" in read_infotext(png)
            with Image.open(io.BytesIO(png)) as image:
                images.append(np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0)
    predicted = classify(np.stack(images))
    assert (predicted == 3).mean() >= 0.8, predicted
