"""Start-up: the device, the fast path, the pipeline and its schedules, as a ready engine."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from olss_core.samplers import FALLBACK_SAMPLER
from olss_core.settings import ConfigError, Settings
from schedules import ScheduleRegistry, model_key
from schedules.model_identity import model_identity
from workers.batch_buckets import BatchBuckets
from workers.embedded_model import resolve_model
from workers.fast_path import (
    FastPathOptions,
    load_pipeline,
    pick_device,
    stop_compiling,
    use_compile_cache,
)
from workers.inference import InferenceEngine
from workers.model_family import check_prediction_types
from workers.schedulers import SchedulerBank, load_model_schedules
from workers.self_calibration import ModelToCalibrate, SelfCalibration
from workers.serving_engine import ServingEngine

DEFAULT_GUIDANCE = 7.5
"""The guidance of a model whose folder declares none (``olss_defaults.json``)."""
COMPILE_CACHE_FOLDER = "torch-compile"
"""Folder of ``OLSS_CACHE_DIR`` that holds ``torch.compile``'s caches."""

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to warm up. ``key``: its registry and stream key; ``options``: the fast
    path it runs with; ``warm_batch_sizes``: the batch sizes warm-up runs (every padded size
    when shapes are fixed by compilation or graphs, else 1)."""

    key: str
    device: torch.device
    engine: ServingEngine
    options: FastPathOptions
    warm_batch_sizes: tuple[int, ...]
    identity: str = ""
    fallback_reason: str | None = None
    """Why OLSS requests without a schedule get ``engine.bank.fallback`` (``None``: none do)."""

    def finish_warm_up(self) -> None:
        """From now on capture and compile nothing new: unwarmed shapes run eagerly."""
        self.engine.finish_warm_up()
        if self.options.compile:
            stop_compiling()


def fast_path_options(settings: Settings, device: torch.device) -> FastPathOptions:
    """The settings' fast path on ``device`` (unset switches take the device's default); a
    combination that cannot run stops start-up naming the settings."""
    try:
        return FastPathOptions.for_device(
            device,
            fp16=settings.fp16,
            sdpa=settings.sdpa,
            channels_last=settings.channels_last,
            compile=settings.compile,
            compile_mode=settings.compile_mode,
            cuda_graphs=settings.cuda_graphs,
        )
    except ValueError as error:
        raise ConfigError(
            f"invalid settings (OLSS_COMPILE, OLSS_COMPILE_MODE, OLSS_CUDA_GRAPHS): {error}"
        ) from None


def load_model(
    settings: Settings, model: str, options: FastPathOptions | None = None,
    calibration: SelfCalibration | None = None, default_guidance: float = DEFAULT_GUIDANCE,
) -> LoadedModel:
    """Load ``model`` (an embedded name, hub id or folder) with the fast path the settings ask
    for (or ``options``: benchmarks pick a compile backend), and the OLSS schedules the
    registry holds for its identity (:mod:`schedules.model_identity`).

    With ``calibration`` (the worker), the schedules the registry lacks at
    ``default_guidance`` are calibrated first (:mod:`workers.self_calibration`); when that is
    off or fails, OLSS requests without a schedule get :data:`FALLBACK_SAMPLER`."""
    device = pick_device(settings.device)
    if device.type == "cuda" and device.index is not None:
        # this (the serving) thread's current device: what takes no device argument (pinned
        # host buffers, streams, events) then lands on cuda:N, not on cuda:0
        torch.cuda.set_device(device)
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    options = options or fast_path_options(settings, device)
    log.info("loading %s on %s (%s)", model, device, options.label)
    if options.compile:
        use_compile_cache(settings.cache_dir / COMPILE_CACHE_FOLDER)
    source = resolve_model(model)
    pipe = load_pipeline(source, device, options)
    registry = ScheduleRegistry.default(settings.writable_schedule_dir)
    key = model_key(source)
    identity = model_identity(source, settings.cache_dir)
    fallback_reason = None
    if calibration is not None:
        fallback_reason = calibration.ensure(
            ModelToCalibrate(pipe, source, key, identity, default_guidance), registry
        )
    if fallback_reason is not None:
        log.warning("OLSS requests without a schedule get %s: %s", FALLBACK_SAMPLER,
                    fallback_reason)
    bank = SchedulerBank(
        pipe.scheduler.config,
        check_prediction_types(load_model_schedules(registry, key, identity),
                               pipe.scheduler.config),
        fallback=FALLBACK_SAMPLER if fallback_reason is not None else None,
    )
    buckets = (
        BatchBuckets.up_to(settings.max_batch_size, settings.batch_buckets)
        if options.fixed_shapes
        else None
    )
    inference = InferenceEngine(pipe, device, options.cuda_graphs, buckets)
    warm_sizes = buckets.sizes if buckets else (1,)
    return LoadedModel(key, device, ServingEngine(inference, bank), options, warm_sizes,
                       identity, fallback_reason)


def free_device_memory() -> None:
    """Return cached CUDA memory (after a failed batch, before its halves run)."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
