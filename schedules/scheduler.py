"""OLSSScheduler: a diffusers scheduler that samples with a fitted OLSS schedule.

Duan et al., "Optimal Linear Subspace Search: Learning to Construct Fast and High-Quality
Schedulers for Diffusion Models", CIKM 2023, arXiv:2305.14677.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from schedules.schedule_file import check_prediction_type

if TYPE_CHECKING:
    from schedules.schedule_file import Schedule


@dataclass
class OLSSSchedulerOutput(BaseOutput):
    """Output of :meth:`OLSSScheduler.step`.

    Args:
        prev_sample (`torch.Tensor` of the sample's shape and dtype):
            ``x_{i+1}``, the sample for the next model call (the final sample after the last step).
    """

    prev_sample: torch.Tensor


class OLSSScheduler(SchedulerMixin, ConfigMixin):
    """Sample with a fitted OLSS schedule: each step is a learned linear combination.

    Step i evaluates the model at ``t_{p_i}`` and forms (arXiv:2305.14677, Eq. 7)
    ``x_{i+1} = w_{i,0} x_init + sum_{j<=i} w_{i,j+1} e_j`` from the initial sample and every
    model output so far. The scheduler works in VP space (``scale_model_input`` is the identity).
    State (initial sample, outputs so far) resets at the first step of every run, so one instance
    serves many generations in a row. ``step`` never synchronises host and device: the
    coefficients are cached once per device and the step index is a counter.

    Args:
        timesteps (`list[int | float]`):
            The k model timesteps ``t_{p_0} > ... > t_{p_{k-1}}``, strictly decreasing.
        coefficients (`list[list[float]]`):
            Ragged weights: row i holds the i+2 numbers ``w_{i,0}, ..., w_{i,i+1}``.
        init_noise_sigma (`float`, defaults to 1.0):
            Standard deviation of the initial sample relative to unit Gaussian noise (1.0 for a
            DDIM teacher; below 1 for an Euler-type teacher recorded in VP space).
        num_train_timesteps (`int`, defaults to 1000):
            The model's number of diffusion training steps (informational, as in DDIM).
        model_id (`str`, *optional*):
            The model the schedule was fitted for.
        guidance_scale (`float`, *optional*):
            The classifier-free guidance scale the schedule was fitted at.
        method (`str`, defaults to `"closed-loop"`):
            How the schedule was fitted: ``"closed-loop"``, ``"paper"`` or ``"uniform"``.
        prediction_type (`str`, defaults to `"epsilon"`):
            What the model outputs (``"epsilon"``, ``"v_prediction"``, ``"sample"``...). The step
            is linear in the model output whatever it is, but the coefficients only fit the
            prediction type they were fitted on: see :meth:`check_prediction_type`.
    """

    order = 1

    @register_to_config
    def __init__(
        self,
        timesteps: list[int | float],
        coefficients: list[list[float]],
        init_noise_sigma: float = 1.0,
        num_train_timesteps: int = 1000,
        model_id: str | None = None,
        guidance_scale: float | None = None,
        method: str = "closed-loop",
        prediction_type: str = "epsilon",
    ) -> None:
        _check_schedule(timesteps, coefficients, init_noise_sigma)
        k = len(timesteps)
        self.init_noise_sigma = float(init_noise_sigma)
        self.num_inference_steps = k
        self._timestep_values = [float(t) for t in timesteps]
        integral = all(float(t).is_integer() for t in timesteps)
        self.timesteps = torch.tensor(
            [int(t) for t in timesteps] if integral else [float(t) for t in timesteps],
            dtype=torch.int64 if integral else torch.float32,
        )
        self._coefficients64 = torch.zeros(k, k + 1, dtype=torch.float64)
        for i, row in enumerate(coefficients):
            self._coefficients64[i, : i + 2] = torch.tensor(row, dtype=torch.float64)
        self._coefficients_on: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}
        self._step_index = 0
        self._history: torch.Tensor | None = None

    @classmethod
    def from_schedule(cls, schedule: Schedule) -> OLSSScheduler:
        """Build the scheduler from a fitted :class:`schedules.schedule_file.Schedule`."""
        return cls(
            timesteps=list(schedule.timesteps),
            coefficients=[list(row) for row in schedule.coefficients],
            init_noise_sigma=schedule.init_noise_sigma,
            num_train_timesteps=schedule.teacher.num_train_timesteps,
            model_id=schedule.model_id,
            guidance_scale=schedule.guidance_scale,
            method=schedule.method.value,
            prediction_type=schedule.prediction_type,
        )

    @property
    def prediction_type(self) -> str:
        """What the model this schedule was fitted on outputs (diffusers' ``prediction_type``)."""
        return self.config.prediction_type

    def check_prediction_type(self, prediction_type: str) -> None:
        """Raise ``ValueError`` unless the model predicts what this schedule was fitted on (e.g.
        ``pipe.scheduler.config.prediction_type`` before swapping this scheduler in)."""
        name = self.config.model_id or "this"
        check_prediction_type(self.prediction_type, prediction_type, f"{name}'s OLSS schedule")

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    @property
    def step_index(self) -> int:
        """Index of the next step within the current run."""
        return self._step_index

    def scale_model_input(self, sample: torch.Tensor, timestep: Any = None) -> torch.Tensor:
        """The identity: OLSS samples are already model inputs (VP space)."""
        return sample

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps: list[int] | None = None,
    ) -> None:
        """Prepare a run. Only the schedule's own step count (and timesteps) is accepted.

        Args:
            num_inference_steps (`int`): must equal the schedule length k.
            device (`str` or `torch.device`, *optional*): where ``self.timesteps`` goes.
            timesteps (`list[int]`, *optional*): must equal the schedule's timesteps if given.
        """
        k = self.num_inference_steps
        if timesteps is not None:
            if [float(t) for t in timesteps] != self._timestep_values:
                raise ValueError(
                    f"this OLSS schedule has fixed timesteps {self.config.timesteps}; "
                    f"custom timesteps {list(timesteps)} are not supported"
                )
        elif num_inference_steps != k:
            raise ValueError(
                f"this OLSS schedule has {k} steps; num_inference_steps={num_inference_steps} "
                f"is not valid (use {k}, or fit a schedule with {num_inference_steps} steps)"
            )
        if device is not None:
            self.timesteps = self.timesteps.to(device)
            # Upload the fp32 weights now, before the denoising loop, so that even the first
            # run's step 0 makes no host-to-device copy (fp16 and fp32 samples both use them).
            self._coefficients_for(self.timesteps.device, torch.float32)
        self._step_index = 0

    def _coefficients_for(self, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
        """The padded ``(k, k+1)`` weights on ``device`` in ``dtype``, moved once and cached."""
        cached = self._coefficients_on.get((device, dtype))
        if cached is None:
            cached = self._coefficients64.to(device=device, dtype=dtype)
            self._coefficients_on[(device, dtype)] = cached
        return cached

    def _index_for(self, timestep: Any) -> int:
        """The step index: the run counter, checked against ``timestep`` when that is free.

        A Python number or CPU tensor is compared with the schedule (no device sync); a device
        tensor is trusted to follow the counter.
        """
        index = self._step_index if self._step_index < self.num_inference_steps else 0
        if isinstance(timestep, torch.Tensor):
            if timestep.device.type != "cpu" or timestep.numel() != 1:
                return index
            value = float(timestep)
        else:
            value = float(timestep)
        if value == self._timestep_values[index]:
            return index
        if value in self._timestep_values:
            return self._timestep_values.index(value)
        raise ValueError(
            f"timestep {value:g} is not in this OLSS schedule; valid: {self.config.timesteps}"
        )

    def step(
        self,
        model_output: torch.Tensor,
        timestep: int | float | torch.Tensor,
        sample: torch.Tensor,
        return_dict: bool = True,
    ) -> OLSSSchedulerOutput | tuple[torch.Tensor]:
        """One OLSS step (arXiv:2305.14677, Eq. 7).

        Symbols: ``sample`` is ``x_i`` (at i = 0 it is ``x_init``, the initial noise times
        ``init_noise_sigma``), ``model_output`` is ``e_i`` (the guided output at ``t_{p_i}``), and
        the result is ``x_{i+1} = w_{i,0} x_init + sum_{j<=i} w_{i,j+1} e_j``. The combination is
        accumulated in float32 (float64 for float64 samples) and returned in the sample's dtype.

        Args:
            model_output (`torch.Tensor`): ``e_i``, the (guided) model output.
            timestep (`int`, `float` or `torch.Tensor`): ``t_{p_i}``, the current timestep.
            sample (`torch.Tensor`): ``x_i``, the current sample.
            return_dict (`bool`, defaults to `True`): return an :class:`OLSSSchedulerOutput`
                rather than a tuple.
        """
        i = self._index_for(timestep)
        if i == 0:
            shape = (self.num_inference_steps + 1, *sample.shape)
            dtype = torch.float64 if sample.dtype == torch.float64 else torch.float32
            history = self._history
            if (
                history is None
                or history.shape != shape
                or history.device != sample.device
                or history.dtype != dtype
            ):
                self._history = torch.empty(shape, dtype=dtype, device=sample.device)
            self._history[0].copy_(sample)
        elif self._history is None:
            raise ValueError(
                f"an OLSS run must start at the first timestep {self._timestep_values[0]:g}, "
                f"got step {i} (timestep {self._timestep_values[i]:g})"
            )
        history = self._history
        history[i + 1].copy_(model_output)
        weights = self._coefficients_for(history.device, history.dtype)[i, : i + 2]
        prev_sample = torch.tensordot(weights, history[: i + 2], dims=1).to(sample.dtype)
        self._step_index = i + 1
        if not return_dict:
            return (prev_sample,)
        return OLSSSchedulerOutput(prev_sample=prev_sample)


def _check_schedule(
    timesteps: list[int | float], coefficients: list[list[float]], init_noise_sigma: float
) -> None:
    k = len(timesteps)
    if k == 0:
        raise ValueError("an OLSS schedule needs at least one timestep")
    values = [float(t) for t in timesteps]
    if any(not math.isfinite(v) for v in values) or any(
        b >= a for a, b in itertools.pairwise(values)
    ):
        raise ValueError(f"timesteps must be finite and strictly decreasing, got {timesteps}")
    if len(coefficients) != k:
        raise ValueError(f"need one coefficient row per timestep ({k}), got {len(coefficients)}")
    for i, row in enumerate(coefficients):
        if len(row) != i + 2:
            raise ValueError(f"coefficients[{i}] must hold {i + 2} numbers, got {len(row)}")
        if not all(math.isfinite(float(c)) for c in row):
            raise ValueError(f"coefficients[{i}] has a non-finite value: {row}")
    if not (math.isfinite(float(init_noise_sigma)) and float(init_noise_sigma) > 0):
        raise ValueError(f"init_noise_sigma must be positive and finite, got {init_noise_sigma}")
