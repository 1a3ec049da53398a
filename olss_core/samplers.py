"""The one table of sampler names: what a request, a teacher spec or a peer may name.

Torch-free data: each name maps to a diffusers scheduler class (by name) and the config
overrides it is built with. ``schedules.samplers.build_sampler`` turns an entry into a
scheduler; the gateway validates names against :data:`SCHEDULER_NAMES` without importing
diffusers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

OLSS = "olss"
"""The learned OLSS schedules (``schedules.OLSSScheduler``), served from the registry."""


@dataclass(frozen=True)
class SamplerSpec:
    """A diffusers sampler: its class name in ``diffusers`` and its ``from_config`` overrides."""

    diffusers_class: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""


SAMPLERS: dict[str, SamplerSpec] = {
    "dpmsolver++": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "DPM-Solver++(2M), Lu et al., arXiv:2211.01095",
    ),
    "unipc": SamplerSpec("UniPCMultistepScheduler", {}, "UniPC, Zhao et al., arXiv:2302.04867"),
    "ddim": SamplerSpec("DDIMScheduler", {}, "DDIM, Song et al., arXiv:2010.02502"),
    "euler": SamplerSpec("EulerDiscreteScheduler", {}, "Euler, Karras et al., arXiv:2206.00364"),
}
"""Every diffusers sampler the service knows, by the name requests and teacher specs use."""

SCHEDULER_NAMES: tuple[str, ...] = (OLSS, *SAMPLERS)
SchedulerName = Literal["olss", "dpmsolver++", "unipc", "ddim", "euler"]
"""The request field's type; ``tests/core`` checks it lists exactly :data:`SCHEDULER_NAMES`."""

PEERS: dict[str, str] = {"dpmsolver++(2M)": "dpmsolver++", "unipc": "unipc"}
"""The samplers OLSS is validated against at calibration (held-out error at the same k), by the
name the fit report gives them."""
