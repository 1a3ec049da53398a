"""Start-up: the device, the fast path, the pipeline and its schedules, as a ready engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from olss_core.settings import Settings
from schedules import ScheduleRegistry, model_key
from workers.embedded_model import resolve_model
from workers.fast_path import FastPathOptions, load_pipeline, pick_device
from workers.inference import InferenceEngine
from workers.schedulers import SchedulerBank, load_model_schedules
from workers.serving_engine import ServingEngine

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to serve. ``key``: its registry and stream key; ``compiled``: whether
    ``torch.compile`` is on (every batch size is then its own compiled shape)."""

    key: str
    device: torch.device
    engine: ServingEngine
    compiled: bool


def load_model(settings: Settings, model: str) -> LoadedModel:
    """Load ``model`` (an embedded name, hub id or folder) with the fast path the settings ask
    for, and the OLSS schedules the registry holds for it."""
    device = pick_device(settings.device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    options = FastPathOptions.for_device(
        device,
        fp16=settings.fp16,
        sdpa=settings.sdpa,
        channels_last=settings.channels_last,
        compile=settings.compile,
        compile_mode=settings.compile_mode,
    )
    log.info("loading %s on %s (%s)", model, device, options.label)
    source = resolve_model(model)
    pipe = load_pipeline(source, device, options)
    registry = ScheduleRegistry.default(settings.writable_schedule_dir)
    key = model_key(source)
    bank = SchedulerBank(pipe.scheduler.config, load_model_schedules(registry, key))
    engine = ServingEngine(InferenceEngine(pipe, device), bank)
    return LoadedModel(key, device, engine, options.compile)


def free_device_memory() -> None:
    """Return cached CUDA memory (after a failed batch, before its halves run)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
