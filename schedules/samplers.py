"""Build a diffusers sampler by its name in the one table, :data:`olss_core.samplers.SAMPLERS`.

Teachers (``"ddim:100"``), held-out peers and the worker's served samplers all come from here,
so a name means the same scheduler everywhere.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import diffusers
from diffusers import SchedulerMixin

from olss_core.samplers import SAMPLERS


def build_sampler(name: str, base_config: Mapping[str, Any]) -> SchedulerMixin:
    """The sampler ``name`` built from the model's scheduler config (betas, prediction type...).

    ``SAMPLERS[name]``'s diffusers class, ``from_config(dict(base_config), **overrides)``.
    Raises ``ValueError`` naming the valid names for an unknown one.
    """
    spec = SAMPLERS.get(name)
    if spec is None:
        raise ValueError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    cls = getattr(diffusers, spec.diffusers_class)
    return cls.from_config(dict(base_config), **spec.overrides)
