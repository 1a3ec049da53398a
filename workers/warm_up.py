"""Warm-up before the first heartbeat: run the engine once per served schedule and batch size.

The runs go through the worker's own engine, so they make exactly the calls requests will make:
``torch.compile`` compiles each padded batch size there (a static shape each), the CUDA graphs
of each are captured (``workers.served_graphs``), cuDNN autotunes and the CUDA allocator grows,
and no request pays for any of it.
"""

from __future__ import annotations

from collections.abc import Sequence

from olss_core.protocol import JobSpec, ScheduleInfo
from olss_core.samplers import OLSS
from workers.engine import Engine

FALLBACK_RUN = ("ddim", 2, 7.5)
"""(scheduler, steps, guidance scale) of the one warm-up run of a model with no OLSS schedule."""


def warm_up(
    engine: Engine, model_key: str, schedules: Sequence[ScheduleInfo], batch_sizes: Sequence[int]
) -> None:
    """One generation per OLSS schedule (or one DDIM run when there is none) and batch size,
    at the engine's native size."""
    width, height = engine.native_size
    runs = [(OLSS, s.steps, s.guidance_scale) for s in schedules] or [FALLBACK_RUN]
    for scheduler, steps, guidance in runs:
        for batch_size in batch_sizes:
            spec = JobSpec(
                model=model_key, prompt="warm-up", width=width, height=height, steps=steps,
                guidance_scale=guidance, seed=0, num_images=batch_size, scheduler=scheduler,
            )
            engine.generate([spec])
