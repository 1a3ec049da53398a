"""SDXL and SD 2.x (v-prediction, zero-terminal SNR) end to end: tiny random-weights pipelines
built from configs are calibrated by ``olss calibrate``, load in real ``olss worker`` processes
and serve OLSS through a real gateway's HTTP API, a seed giving the same image alone or batched.
"""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devtools.tiny_families import save_tiny_sd2_pipeline, save_tiny_sdxl_pipeline
from schedules.model_identity import identity_digest, model_identity
from tests.support.processes import (
    Gateway,
    Worker,
    service_env,
    spawn_gateway,
    spawn_worker,
)
from tests.support.redis_db import clean_db, redis_url

pytestmark = pytest.mark.e2e

FAMILIES_DB = 10
PIXEL_TOLERANCE = 2  # of 255: CPU convolutions may differ in the last bits with batch size
OLSS_STEPS = 4
FAMILY_GUIDANCE = {"tiny-sdxl": 5.0, "tiny-sd2": 7.5}
"""Each family's default guidance (workers.model_family), where its schedule is fitted."""


@dataclass
class FamilyStack:
    gateway: Gateway
    workers: dict[str, Worker]
    models: dict[str, Path]


def calibrate(model: Path, guidance: float, out: Path, env: dict[str, str]) -> None:
    """``olss calibrate`` with tiny knobs: teacher DDIM-10, 6 prompts, the paper's method."""
    args = [sys.executable, "-m", "olss_cli", "calibrate", "--model", str(model),
            "--steps", str(OLSS_STEPS), "--teacher", "ddim:10", "--guidance", str(guidance),
            "--num-prompts", "6", "--num-validation", "1", "--method", "paper",
            "--out", str(out)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="module")
def families(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FamilyStack]:
    root = tmp_path_factory.mktemp("families")
    models = {
        "tiny-sdxl": save_tiny_sdxl_pipeline(root / "tiny-sdxl"),
        "tiny-sd2": save_tiny_sd2_pipeline(root / "tiny-sd2", zero_terminal_snr=True),
    }
    schedules = root / "schedules"
    with clean_db(FAMILIES_DB):
        env = service_env(redis_url(FAMILIES_DB), schedule_dir=schedules,
                          cache_dir=root / "cache", auto_calibrate="false",
                          max_batch_wait_ms=200)
        with ThreadPoolExecutor(len(models)) as pool:
            list(pool.map(lambda name: calibrate(models[name], FAMILY_GUIDANCE[name],
                                                 schedules, env), models))
        gateway = spawn_gateway(env)
        workers = {name: spawn_worker(env, model=str(path)) for name, path in models.items()}
        try:
            for worker in workers.values():
                worker.wait_ready()
            gateway.wait_ready()
            yield FamilyStack(gateway, workers, models)
        finally:
            gateway.stop()
            for worker in workers.values():
                worker.stop()


def pixels(data: str) -> np.ndarray:
    with Image.open(io.BytesIO(base64.b64decode(data))) as image:
        return np.asarray(image.convert("RGB"), dtype=np.int16)


def generate(http: httpx.Client, model: Path, **body: object) -> dict:
    response = http.post("/generate", json={"model": str(model), "width": 32, "height": 32,
                                            **body})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.mark.parametrize("name", list(FAMILY_GUIDANCE))
def test_a_family_is_served_with_olss_and_its_defaults(families: FamilyStack, name: str) -> None:
    info = families.workers[name].info
    assert info is not None and (info.width, info.height) == (32, 32)
    assert info.default_guidance_scale == FAMILY_GUIDANCE[name]
    assert info.default_steps == (30 if name == "tiny-sdxl" else 25)
    # olss calibrate keys the files by the model's identity: its name plus a weights digest.
    identity = model_identity(families.models[name])
    stem = f"{name}-{identity_digest(identity)}"
    schedule_file = next((families.models[name].parent / "schedules").glob(f"{stem}__*.json"))
    saved = json.loads(schedule_file.read_text())
    expected = "v_prediction" if name == "tiny-sd2" else "epsilon"
    assert (saved["prediction_type"], saved["model_identity"]) == (expected, identity)
    with httpx.Client(base_url=families.gateway.url, timeout=120) as http:
        result = generate(http, families.models[name], prompt="a red fox", seed=5,
                          scheduler="olss", steps=OLSS_STEPS)
    assert result["schedule"] == info.default_schedule
    assert result["schedule"].startswith(f"{stem}__{OLSS_STEPS}steps")
    assert pixels(result["images"][0]["data_base64"]).shape == (32, 32, 3)


@pytest.mark.parametrize("name", list(FAMILY_GUIDANCE))
def test_a_seed_gives_the_same_image_alone_or_batched(families: FamilyStack, name: str) -> None:
    """Two images of one job are one batch (seeds 10 and 11); seed 11 alone is the second."""
    model = families.models[name]
    with httpx.Client(base_url=families.gateway.url, timeout=120) as http:
        batched = generate(http, model, prompt="a lighthouse", seed=10, num_images=2,
                           scheduler="olss", steps=OLSS_STEPS)
        alone = generate(http, model, prompt="a lighthouse", seed=11, scheduler="olss",
                         steps=OLSS_STEPS)
    assert batched["seeds"] == [10, 11]
    second = pixels(batched["images"][1]["data_base64"])
    first = pixels(batched["images"][0]["data_base64"])
    single = pixels(alone["images"][0]["data_base64"])
    assert np.abs(second - single).max() <= PIXEL_TOLERANCE
    assert np.abs(first - single).max() > PIXEL_TOLERANCE
