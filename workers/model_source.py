"""Which model a worker loads: the embedded default, the tiny dev pipeline, or any other.

``resolve_model`` is the one place that maps a configured model name to what
``from_pretrained`` loads: embedded models (``workers.embedded_model``, e.g. ``olss-digits``) to
their package folder, ``olss-tiny`` to the random-weights tiny Stable Diffusion pipeline (built on
first use into the cache folder, with OLSS schedules calibrated for it on first use), anything
else (hub id, local folder) unchanged. ``DEFAULT_MODEL`` serves when none is configured: the
trained ``olss-digits``, whose OLSS schedules ship in the built-in registry.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from diffusers import StableDiffusionPipeline

from schedules import ScheduleRegistry, model_key
from schedules.calibrate import calibrate, default_prompts
from schedules.tiny_pipeline import save_tiny_pipeline
from workers import embedded_model

DEFAULT_MODEL = "olss-digits"
DEV_MODEL = "olss-tiny"
DEV_CALIBRATION = {
    "num_steps": [4, 5],
    "teacher": "ddim:20",
    "num_validation": 2,
    "method": "paper",
}
DEV_PROMPTS = 10

log = logging.getLogger(__name__)


def resolve_model(name_or_path: str | None, cache_dir: Path) -> str:
    """The hub id or local folder to load for ``name_or_path`` (``None``: the default model)."""
    name = name_or_path or DEFAULT_MODEL
    if name == DEV_MODEL:
        return str(ensure_dev_model(cache_dir))
    return embedded_model.resolve_model(name)


def ensure_dev_model(cache_dir: Path) -> Path:
    """``<cache_dir>/olss-tiny``, built there on first use (safe when workers race)."""
    target = cache_dir / DEV_MODEL
    if (target / "model_index.json").is_file():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
    try:
        built = save_tiny_pipeline(staging / DEV_MODEL)
        try:
            built.rename(target)
        except OSError:
            if not (target / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("built the dev model %s at %s", DEV_MODEL, target)
    return target


def ensure_dev_schedules(pipe: StableDiffusionPipeline, registry: ScheduleRegistry) -> None:
    """Calibrate and store OLSS schedules for the dev model when the registry has none."""
    key = model_key(pipe.name_or_path)
    if key != DEV_MODEL or any(entry.model == key for entry in registry.list()):
        return
    log.info("calibrating OLSS schedules for %s (first use)", key)
    base = pipe.scheduler
    prompts = default_prompts()[:DEV_PROMPTS]
    for schedule in calibrate(pipe, prompts, progress=False, **DEV_CALIBRATION):
        log.info("wrote %s", registry.put(schedule))
    pipe.scheduler = base
