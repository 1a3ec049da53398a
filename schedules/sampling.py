"""The standard diffusers sampling loop, and the model function every OLSS fit calls.

A diffusers scheduler samples with ``set_timesteps``, ``x = noise * init_noise_sigma``, then per
timestep ``t``: ``scale_model_input(x, t)``, the model, ``x = step(output, t, x).prev_sample``
(the loop of ``StableDiffusionPipeline.__call__``). The model is a ``model_fn(sample, timestep)``
that returns the guided output ``eps_u + g (eps_c - eps_u)`` (Ho & Salimans, 2022, eq. 6) for
the N examples, so every scheduler, OLSS included, runs on the same model.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

ModelFn = Callable[[torch.Tensor, Any], Any]
"""``model_fn(sample, timestep) -> guided model output`` for the N examples, in recorded order.

``timestep`` is a Python number (:func:`timestep_number`); the output is anything
``torch.as_tensor`` takes, of the sample's shape."""


@runtime_checkable
class SelectableModel(Protocol):
    """A :data:`ModelFn` that can also give the model for a subset of its examples (so a search
    can run on fewer examples than were recorded)."""

    def __call__(self, sample: torch.Tensor, timestep: Any) -> Any: ...

    def select(self, index: torch.Tensor) -> ModelFn:
        """The model for examples ``index`` (in that order)."""
        ...


def timestep_number(timestep: Any) -> int | float:
    """A timestep as a Python number: an int when integral (as diffusers' DDIM timesteps are)."""
    value = float(timestep)
    return int(value) if value.is_integer() else value


def run_sampler(
    scheduler: Any,
    model_fn: ModelFn,
    noise: torch.Tensor,
    num_inference_steps: int | None = None,
    timesteps: Sequence[int] | None = None,
) -> torch.Tensor:
    """Run any diffusers scheduler from unit ``noise`` with the standard loop; the final sample.

    Give the step count (``set_timesteps(n)``) or explicit ``timesteps`` (as Align Your Steps
    needs), not both. Model outputs are cast to the sample's device and dtype.
    """
    if (num_inference_steps is None) == (timesteps is None):
        raise ValueError("give exactly one of num_inference_steps and timesteps")
    if timesteps is not None:
        scheduler.set_timesteps(timesteps=list(timesteps))
    else:
        scheduler.set_timesteps(num_inference_steps)
    sample = noise * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t)
        output = model_fn(model_input, timestep_number(t))
        output = torch.as_tensor(output).to(sample.device, sample.dtype)
        sample = scheduler.step(output, t, sample).prev_sample
    return sample
