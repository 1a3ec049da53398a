"""Fixtures shared by the whole suite: offline mode, the test Redis database and the tiny
pipeline built from configs. Helpers that tests import live in ``tests/support``."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.redis_db import UNIT_DB, clean_db

# Tests never reach a model hub: everything they load is built locally.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


@pytest.fixture()
def db() -> Iterator[redis.Redis]:
    """A client on the unit-test database of this run's private Redis, empty before and after."""
    with clean_db(UNIT_DB) as client:
        yield client


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weights StableDiffusionPipeline saved as a diffusers folder."""
    from devtools.tiny_pipeline import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny-sd")


@pytest.fixture()
def tiny_pipeline(tiny_pipeline_dir: Path):
    """A fresh pipeline loaded with ``from_pretrained`` from the saved folder, on CPU."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(tiny_pipeline_dir)
    pipe.set_progress_bar_config(disable=True)
    return pipe
