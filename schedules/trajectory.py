"""Record teacher trajectories: the data OLSS fits (Duan et al., arXiv:2305.14677, Sec. 3).

For N examples a teacher sampler runs T steps. We keep, per step i, the sample ``x_i`` the model
saw, the (guided) model output ``e_i`` and the timestep ``t_i``, plus the teacher's final sample
``x_T``. Convention: the recorded sample is the *model input* ``scheduler.scale_model_input(x, t)``
(the identity for DDIM; the VP-space sample for Euler-type sigma schedulers), so that OLSS, which
works in VP space, can distil any teacher.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from schedules.sampling import timestep_number


@dataclass(frozen=True)
class Trajectories:
    """Teacher trajectories for N examples, on CPU.

    Args:
        samples: ``(T+1, N, ...)``: ``x_0`` (initial sample) ... ``x_T`` (final sample).
        outputs: ``(T, N, ...)``: guided model outputs ``e_0 ... e_{T-1}``.
        timesteps: ``(T,)`` float64: the teacher's model timesteps ``t_0 > ... > t_{T-1}``.
        init_noise_sigma: ``x_0`` divided by unit Gaussian noise (1.0 for DDIM).
        teacher_class: the teacher scheduler's class name.
        teacher_config: the teacher scheduler's config.
        model_id: key of the model (see :func:`schedules.registry.model_key`), if known.
        guidance_scale: classifier-free guidance scale of the outputs, if known.
        resolution: ``(height, width)`` in pixels, if an image model.
        conditions: per example, its condition (the prompt, or the class), if known: fits
            weight conditions equally and reports name the worst one.
    """

    samples: torch.Tensor
    outputs: torch.Tensor
    timesteps: torch.Tensor
    init_noise_sigma: float = 1.0
    teacher_class: str = "unknown"
    teacher_config: dict[str, Any] | None = None
    model_id: str = "unknown"
    guidance_scale: float = 1.0
    resolution: tuple[int, int] | None = None
    conditions: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        T = self.timesteps.shape[0]
        if self.samples.shape[0] != T + 1 or self.outputs.shape[0] != T:
            raise ValueError(
                f"need samples (T+1, N, ...) and outputs (T, N, ...) with T={T} timesteps; got "
                f"samples {tuple(self.samples.shape)}, outputs {tuple(self.outputs.shape)}"
            )
        if self.samples.shape[1:] != self.outputs.shape[1:]:
            raise ValueError(
                f"samples and outputs must share (N, ...); got {tuple(self.samples.shape[1:])} "
                f"and {tuple(self.outputs.shape[1:])}"
            )
        if self.conditions is not None and len(self.conditions) != self.samples.shape[1]:
            raise ValueError(
                f"need one condition per example ({self.samples.shape[1]}), "
                f"got {len(self.conditions)}"
            )

    @property
    def num_steps(self) -> int:
        """T."""
        return int(self.timesteps.shape[0])

    @property
    def num_examples(self) -> int:
        """N."""
        return int(self.samples.shape[1])

    def timestep(self, i: int) -> int | float:
        """``t_i`` as a Python number (:func:`schedules.sampling.timestep_number`)."""
        return timestep_number(self.timesteps[i])

    def condition_labels(self) -> list[str]:
        """Each example's condition (``""`` for every example when unknown)."""
        if self.conditions is None:
            return [""] * self.num_examples
        return list(self.conditions)

    def select(self, index: slice | list[int] | torch.Tensor) -> Trajectories:
        """The same trajectories restricted to some examples (in the given order)."""
        conditions = None
        if self.conditions is not None:
            conditions = tuple(np.asarray(self.conditions, dtype=object)[_as_index(index)])
        return replace(
            self,
            samples=self.samples[:, index],
            outputs=self.outputs[:, index],
            conditions=conditions,
        )

    def with_metadata(self, **kwargs: Any) -> Trajectories:
        """A copy with ``model_id`` / ``guidance_scale`` / ``resolution`` etc. set."""
        return replace(self, **kwargs)


class TrajectoryRecorder:
    """Wrap a diffusers scheduler and record every step it takes.

    Use it where the teacher scheduler would go, e.g. ``pipe.scheduler = TrajectoryRecorder(s)``:
    attributes (``config``, ``timesteps``, ``order``, ``init_noise_sigma``, ...) are the
    teacher's; ``set_timesteps`` (the teacher's signature: custom ``timesteps`` pass through
    pipelines) starts a new run; ``step`` has the teacher's signature (so pipelines pass the same
    extra kwargs, such as ``eta`` or ``generator``), records
    ``(scale_model_input(sample, t), model_output, t)`` and returns the teacher's result. Each
    complete run adds its batch to the examples; :meth:`trajectories` concatenates them along N.

    Args:
        teacher: any diffusers scheduler.
        dtype: dtype the recordings are kept in on CPU.
    """

    def __init__(self, teacher: Any, dtype: torch.dtype = torch.float32) -> None:
        self.__dict__["teacher"] = teacher
        self.__dict__["dtype"] = dtype
        self.__dict__["_runs"] = []
        self.__dict__["_current"] = None

        @functools.wraps(teacher.step)
        def step(*args: Any, **kwargs: Any) -> Any:
            return self._record_step(*args, **kwargs)

        @functools.wraps(teacher.set_timesteps)
        def set_timesteps(*args: Any, **kwargs: Any) -> Any:
            """The teacher's ``set_timesteps``; also starts a new recorded run."""
            result = teacher.set_timesteps(*args, **kwargs)
            self.__dict__["_current"] = None
            return result

        # Instance attributes with the teacher's signatures: pipelines inspect them (which step
        # kwargs to pass, whether custom ``timesteps`` are supported).
        self.__dict__["step"] = step
        self.__dict__["set_timesteps"] = set_timesteps

    # --- delegation ---------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["teacher"], name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            self.__dict__[name] = value
        else:
            setattr(self.teacher, name, value)

    # --- recording ----------------------------------------------------------------------------
    def _record_step(
        self, model_output: torch.Tensor, timestep: Any, sample: torch.Tensor, *args: Any, **kw: Any
    ) -> Any:
        teacher = self.teacher
        total = len(teacher.timesteps)
        if self._current is None or len(self._current["outputs"]) >= total:
            self.__dict__["_current"] = {
                "samples": [],
                "outputs": [],
                "timesteps": [],
                "raw0": None,
            }
        run = self._current
        if run["raw0"] is None:
            run["raw0"] = sample.detach().to("cpu", torch.float64)
        scaled = teacher.scale_model_input(sample, timestep)
        run["samples"].append(scaled.detach().to("cpu", self.dtype))
        run["outputs"].append(model_output.detach().to("cpu", self.dtype))
        run["timesteps"].append(float(timestep))
        result = teacher.step(model_output, timestep, sample, *args, **kw)
        if len(run["outputs"]) == total:
            prev = result.prev_sample if hasattr(result, "prev_sample") else result[0]
            run["samples"].append(prev.detach().to("cpu", self.dtype))
            x0 = run["samples"][0].to(torch.float64)
            raw_norm = float(run["raw0"].norm())
            run["x0_scale"] = float(x0.norm()) / raw_norm if raw_norm > 0 else 1.0
            self._runs.append(run)
            self.__dict__["_current"] = None
        return result

    @property
    def num_examples(self) -> int:
        return sum(run["samples"][0].shape[0] for run in self._runs)

    def reset(self) -> None:
        """Forget every recorded run."""
        self._runs.clear()
        self.__dict__["_current"] = None

    def trajectories(self) -> Trajectories:
        """All complete runs so far, concatenated along N (examples keep their run order)."""
        if not self._runs:
            raise ValueError("no complete sampling run was recorded; run the teacher first")
        ts = self._runs[0]["timesteps"]
        for run in self._runs[1:]:
            if run["timesteps"] != ts:
                raise ValueError(
                    "recorded runs used different teacher timesteps; record with one step count"
                )
        samples = torch.stack(
            [torch.cat([run["samples"][i] for run in self._runs]) for i in range(len(ts) + 1)]
        )
        outputs = torch.stack(
            [torch.cat([run["outputs"][i] for run in self._runs]) for i in range(len(ts))]
        )
        scales = [run["x0_scale"] for run in self._runs]
        init_noise_sigma = float(self.teacher.init_noise_sigma) * math.fsum(scales) / len(scales)
        return Trajectories(
            samples=samples,
            outputs=outputs,
            timesteps=torch.tensor(ts, dtype=torch.float64),
            init_noise_sigma=init_noise_sigma,
            teacher_class=type(self.teacher).__name__,
            teacher_config=_jsonable(dict(self.teacher.config)),
        )


def _as_index(index: slice | list[int] | torch.Tensor) -> slice | np.ndarray:
    """A ``select`` index usable on a numpy array."""
    if isinstance(index, slice):
        return index
    return np.asarray(index.tolist() if isinstance(index, torch.Tensor) else index)


def _jsonable(value: Any) -> Any:
    """Config values as plain JSON types (tuples -> lists, tensors/arrays -> lists)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
