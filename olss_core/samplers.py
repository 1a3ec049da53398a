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
    """A diffusers sampler: its class name in ``diffusers`` and its ``from_config`` overrides.

    ``to_zero``: as an OLSS teacher (``"name:T"``), it runs on T timesteps spaced evenly from
    the last training timestep down to 0, then steps to sigma = 0 (diffusers' own spacings stop
    short of t = 0); served, it uses ``set_timesteps(n)`` like any other sampler.

    ``a1111_name``: the name AUTOMATIC1111's web UI shows for it (its API's ``sampler_name``,
    the ``Sampler:`` of an infotext).
    """

    diffusers_class: str
    overrides: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    to_zero: bool = False
    a1111_name: str = ""


SAMPLERS: dict[str, SamplerSpec] = {
    "dpmsolver++": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {"algorithm_type": "dpmsolver++", "solver_order": 2},
        "DPM-Solver++(2M), Lu et al., arXiv:2211.01095",
        a1111_name="DPM++ 2M",
    ),
    "unipc": SamplerSpec(
        "UniPCMultistepScheduler", {}, "UniPC, Zhao et al., arXiv:2302.04867", a1111_name="UniPC"
    ),
    "ddim": SamplerSpec(
        "DDIMScheduler", {}, "DDIM, Song et al., arXiv:2010.02502", a1111_name="DDIM"
    ),
    "euler": SamplerSpec(
        "EulerDiscreteScheduler", {}, "Euler, Karras et al., arXiv:2206.00364", a1111_name="Euler"
    ),
    "dpmsolver++3m": SamplerSpec(
        "DPMSolverMultistepScheduler",
        {
            "algorithm_type": "dpmsolver++",
            "solver_order": 3,
            "timestep_spacing": "trailing",
            "final_sigmas_type": "zero",
        },
        "DPM-Solver++(3M), Lu et al., arXiv:2211.01095; OLSS's default teacher, run to t = 0",
        to_zero=True,
        a1111_name="DPM++ 3M",
    ),
}
"""Every diffusers sampler the service knows, by the name requests and teacher specs use."""

SCHEDULER_NAMES: tuple[str, ...] = (OLSS, *SAMPLERS)
SchedulerName = Literal["olss", "dpmsolver++", "unipc", "ddim", "euler", "dpmsolver++3m"]
"""The request field's type; ``tests/core`` checks it lists exactly :data:`SCHEDULER_NAMES`."""

A1111_NAMES: dict[str, str] = {
    OLSS: "OLSS", **{name: spec.a1111_name for name, spec in SAMPLERS.items()}
}
"""A1111's display name of every scheduler a request may name (the A1111 API's samplers, the
infotext written into images)."""

PEERS: dict[str, str] = {"dpmsolver++(2M)": "dpmsolver++", "unipc": "unipc"}
"""The samplers OLSS is validated against at calibration (held-out error at the same k), by the
name the fit report gives them."""

FALLBACK_SAMPLER = "dpmsolver++"
"""What an OLSS request gets at a step count its model has no schedule for (auto-calibration
off or failed): DPM-Solver++(2M), the strongest few-step peer of :data:`PEERS`."""
