"""Analytic diffusion testbed: a class-conditional Gaussian mixture with an exact model.

The data distribution is a mixture of Gaussians ``N(mu_k, Sigma_k)``, all covariances diagonal
in one shared rotated basis (isotropic, or low-rank: wide along a subspace, thin across it); each
class owns one or a few components. Under the variance-preserving forward process of Ho et al.
(2020), ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4), every marginal stays a
mixture:

    p_t(x | c) = sum_{k in c} w_k N(x; sqrt(abar_t) mu_k, abar_t Sigma_k + (1 - abar_t) I).

The minimum-MSE noise prediction is ``eps(x, t) = -sqrt(1 - abar_t) grad_x log p_t(x)``
(Song et al., 2021, "Score-Based Generative Modeling through SDEs", eq. 4 with the VP
perturbation kernel), and the minimum-MSE ``x_0`` prediction is the exact posterior mean, so
the "model" here is exact, for every ``prediction_type`` (epsilon, v, sample), and costs
microseconds. Classifier-free guidance combines the conditional and unconditional predictions as
``out_u + g (out_c - out_u)`` (Ho & Salimans, 2022, eq. 6).

The noise schedule is Stable Diffusion's scaled-linear one (:mod:`devtools.sd_configs`) unless
another ``alphas_cumprod`` is given (e.g. zero terminal SNR). Everything is float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from devtools.sd_configs import SD_BETA_END, SD_BETA_START, SD_NUM_TRAIN_TIMESTEPS
from schedules.sampling import ModelFn, run_sampler
from schedules.trajectory import Trajectories, TrajectoryRecorder


def sd_alphas_cumprod(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``abar_t = prod_{s<=t} (1 - beta_s)``, ``beta = linspace(sqrt(b0), sqrt(b1), 1000)^2``."""
    betas = (
        torch.linspace(
            math.sqrt(SD_BETA_START),
            math.sqrt(SD_BETA_END),
            SD_NUM_TRAIN_TIMESTEPS,
            dtype=torch.float64,
        )
        ** 2
    )
    return torch.cumprod(1.0 - betas, dim=0).to(dtype)


def alpha_bar_at(timestep: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """``abar`` at possibly non-integer timesteps, interpolating log-SNR linearly in ``t``.

    ``log SNR = log(abar / (1 - abar)) = -2 log sigma``, so this is linear interpolation of
    ``log sigma``: the exact inverse of diffusers' ``_sigma_to_t``, which Karras-sigma schedulers
    use to turn a sigma into a float timestep. Timesteps are clamped to ``[0, T-1]``.
    """
    t = timestep.to(torch.float64).clamp(0.0, alphas_cumprod.numel() - 1)
    log_snr = torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)
    low = t.floor().long().clamp(max=alphas_cumprod.numel() - 2)
    frac = t - low
    below, above = log_snr[low], log_snr[low + 1]
    # At integer timesteps take the table's value: a zero-terminal-SNR end is -inf, and
    # -inf * 0 would be NaN.
    interp = torch.where(
        frac == 0, below, torch.where(frac == 1, above, below + frac * (above - below))
    )
    return torch.sigmoid(interp)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
"""What the analytic model can return: diffusers' ``prediction_type`` values."""


@dataclass(frozen=True)
class MixtureConfig:
    """A class-conditional Gaussian mixture in ``dim`` dimensions.

    Class centres are ``separation * u_c`` with ``u_c ~ N(0, I / r)`` in an ``r``-dimensional
    subspace (``r = rank``, default ``dim``: the whole space), so ``|centre| ~ separation``; each
    of a class's ``components_per_class`` components sits at its centre plus
    ``within_class_spread * N(0, I / r)`` in the same subspace. A component's std is
    ``component_std`` along the subspace and ``off_subspace_std`` across it (low-rank data when
    ``rank < dim`` and ``off_subspace_std`` is small); the subspace is spanned by the first
    ``rank`` columns of a random rotation. Components of a class are equally weighted and classes
    equally likely.
    """

    dim: int = 16
    num_classes: int = 4
    components_per_class: int = 2
    separation: float = 3.0
    component_std: float = 0.3
    within_class_spread: float = 1.0
    rank: int | None = None
    off_subspace_std: float = 0.02
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "num_classes", "components_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.component_std <= 0 or self.off_subspace_std <= 0:
            raise ValueError(
                f"component_std and off_subspace_std must be > 0, got {self.component_std} "
                f"and {self.off_subspace_std}"
            )
        if self.rank is not None and not 1 <= self.rank <= self.dim:
            raise ValueError(f"rank must be in [1, dim={self.dim}], got {self.rank}")

    @property
    def subspace_dim(self) -> int:
        """``rank``, or ``dim`` when the data fill the whole space."""
        return self.dim if self.rank is None else self.rank


class GaussianMixtureDiffusion:
    """Exact model outputs for a class-conditional Gaussian mixture under a VP process.

    Every component is ``N(mu_k, Q diag(s^2) Q^T)`` with one rotation ``Q`` and one diagonal
    ``s^2`` shared by all components (``Q`` is the identity for isotropic mixtures), so in the
    rotated coordinates ``y = Q^T x`` every noisy marginal is a mixture of axis-aligned Gaussians
    of equal covariance and the posterior is exact.

    Args:
        config: the mixture.
        alphas_cumprod: ``abar_t`` for the training timesteps (default Stable Diffusion's,
            :func:`sd_alphas_cumprod`); a zero-terminal-SNR schedule (``abar_{T-1} = 0``) works.
    """

    def __init__(
        self, config: MixtureConfig | None = None, alphas_cumprod: torch.Tensor | None = None
    ) -> None:
        self.config = config or MixtureConfig()
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        r = cfg.subspace_dim
        centres = cfg.separation * torch.randn(
            cfg.num_classes, r, generator=gen, dtype=torch.float64
        )
        centres = centres / math.sqrt(r)
        offsets = torch.randn(
            cfg.num_classes, cfg.components_per_class, r, generator=gen, dtype=torch.float64
        ) * (cfg.within_class_spread / math.sqrt(r))
        if cfg.components_per_class == 1:
            offsets.zero_()
        num_components = cfg.num_classes * cfg.components_per_class
        sub_means = (centres[:, None, :] + offsets).reshape(num_components, r)
        if cfg.rank is None:
            self.rotation = torch.eye(cfg.dim, dtype=torch.float64)
        else:
            rotation, _ = torch.linalg.qr(
                torch.randn(cfg.dim, cfg.dim, generator=gen, dtype=torch.float64)
            )
            self.rotation = rotation
        self.rotated_means = torch.zeros(num_components, cfg.dim, dtype=torch.float64)
        self.rotated_means[:, :r] = sub_means
        self.means = self.rotated_means @ self.rotation.T
        self.axis_stds = torch.full((cfg.dim,), cfg.off_subspace_std, dtype=torch.float64)
        self.axis_stds[:r] = cfg.component_std
        self.component_class = torch.arange(cfg.num_classes).repeat_interleave(
            cfg.components_per_class
        )
        self.log_weights = torch.full(
            (num_components,), -math.log(num_components), dtype=torch.float64
        )
        self.alphas_cumprod = (
            sd_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod.to(torch.float64)
        )

    @property
    def dim(self) -> int:
        return self.config.dim

    def class_means(self) -> torch.Tensor:
        """Component means of each class, ``(num_classes, components_per_class, dim)``."""
        return self.means.reshape(self.config.num_classes, self.config.components_per_class, -1)

    def sample_data(
        self, labels: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Draw ``x_0`` from ``p_0(x | c)`` for each class label, ``(N, dim)``."""
        labels = labels.long()
        pick = torch.randint(self.config.components_per_class, labels.shape, generator=generator)
        comp = labels * self.config.components_per_class + pick
        noise = torch.randn(labels.numel(), self.dim, generator=generator, dtype=torch.float64)
        return (self.rotated_means[comp] + self.axis_stds * noise) @ self.rotation.T

    def _posterior(
        self, y: torch.Tensor, abar: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Log terms ``log w_k N(y; sqrt(abar) m_k, diag(v))`` ``(N, K)`` (components of other
        classes at ``-inf`` when ``labels`` is given) and the variances
        ``v = abar s^2 + 1 - abar`` ``(N, d)``, shared by the components. The squared distances
        are ``sum_j (y_j^2 - 2 sqrt(abar) y_j m_kj + abar m_kj^2) / v_j`` (matrix products)."""
        root = abar.sqrt()[:, None]
        var = abar[:, None] * self.axis_stds**2 + (1.0 - abar)[:, None]
        inverse = 1.0 / var
        squared = (
            (y * y * inverse).sum(-1, keepdim=True)
            - 2.0 * root * ((y * inverse) @ self.rotated_means.T)
            + abar[:, None] * (inverse @ (self.rotated_means**2).T)
        ).clamp(min=0.0)
        log_terms = self.log_weights - 0.5 * (
            squared + torch.log(2 * math.pi * var).sum(-1, keepdim=True)
        )
        if labels is not None:
            mask = self.component_class[None, :] == labels.long().reshape(-1, 1)
            log_terms = log_terms.masked_fill(~mask, -math.inf)
        return log_terms, var

    def _predictions(
        self, y: torch.Tensor, abar: torch.Tensor, labels: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact ``eps`` and ``x0`` predictions in rotated coordinates.

        With responsibilities ``r = softmax(log_terms)`` and the posterior mean of the component
        means ``m = sum_k r_k m_k``: ``eps = sqrt(1 - abar) (y - sqrt(abar) m) / v``
        (``-sqrt(1 - abar) grad log p_t``, Song et al., 2021) and the posterior mean
        ``x0 = m + sqrt(abar) s^2 (y - sqrt(abar) m) / v``; both stay finite at ``abar = 0``
        (zero terminal SNR).
        """
        log_terms, var = self._posterior(y, abar, labels)
        mean = torch.softmax(log_terms, dim=-1) @ self.rotated_means
        scaled = (y - abar.sqrt()[:, None] * mean) / var
        eps = (1.0 - abar).sqrt()[:, None] * scaled
        x0 = mean + abar.sqrt()[:, None] * self.axis_stds**2 * scaled
        return eps, x0

    def _flat_inputs(self, x: torch.Tensor, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(y, abar)``: rotated float64 samples ``(N, d)`` and one ``abar`` per example."""
        flat = x.reshape(x.shape[0], -1).to(torch.float64)
        if flat.shape[1] != self.dim:
            raise ValueError(
                f"sample has {flat.shape[1]} features per example, mixture dim={self.dim}"
            )
        t = torch.as_tensor(timestep, dtype=torch.float64).reshape(-1)
        if t.numel() not in (1, flat.shape[0]):
            raise ValueError(
                f"timestep must be a scalar or one per example, got {t.numel()} values"
            )
        abar = alpha_bar_at(t, self.alphas_cumprod).expand(flat.shape[0])
        return flat @ self.rotation, abar

    def log_density(
        self, x: torch.Tensor, timestep: Any, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p_t(x | c)``, or the unconditional ``log p_t(x)`` when ``labels`` is None."""
        y, abar = self._flat_inputs(x, timestep)
        log_terms, _ = self._posterior(y, abar, labels)
        if labels is not None:
            class_weight = self.config.components_per_class / self.log_weights.numel()
            log_terms = log_terms - math.log(class_weight)
        return torch.logsumexp(log_terms, dim=-1)

    def predict(
        self,
        x: torch.Tensor,
        timestep: Any,
        labels: torch.Tensor | None = None,
        prediction_type: str = "epsilon",
    ) -> torch.Tensor:
        """The exact model output of ``prediction_type`` (see :data:`PREDICTION_TYPES`).

        ``"epsilon"``: the noise; ``"sample"``: the posterior mean of ``x_0``;
        ``"v_prediction"``: ``v = sqrt(abar) eps - sqrt(1 - abar) x0`` (Salimans & Ho, 2022,
        "Progressive Distillation", Sec. 4). ``labels=None`` gives the unconditional output.
        """
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(
                f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}"
            )
        y, abar = self._flat_inputs(x, timestep)
        eps, x0 = self._predictions(y, abar, labels)
        if prediction_type == "epsilon":
            out = eps
        elif prediction_type == "sample":
            out = x0
        else:
            out = abar.sqrt()[:, None] * eps - (1.0 - abar).sqrt()[:, None] * x0
        return (out @ self.rotation.T).reshape(x.shape)

    def eps(
        self, x: torch.Tensor, timestep: Any, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact ``eps(x, t) = -sqrt(1 - abar) grad log p_t(x | c)`` (Song et al., 2021), from
        the components' posterior responsibilities (of the class, if ``labels`` is given)."""
        return self.predict(x, timestep, labels)

    def guided(
        self,
        x: torch.Tensor,
        timestep: Any,
        labels: torch.Tensor,
        guidance: float,
        prediction_type: str = "epsilon",
    ) -> torch.Tensor:
        """Classifier-free guidance ``out_u + g (out_c - out_u)`` (Ho & Salimans, 2022, eq. 6)
        on outputs of ``prediction_type``."""
        cond = self.predict(x, timestep, labels, prediction_type)
        if guidance == 1.0:
            return cond
        uncond = self.predict(x, timestep, None, prediction_type)
        return uncond + guidance * (cond - uncond)

    def model_fn(
        self, labels: torch.Tensor, guidance: float, prediction_type: str = "epsilon"
    ) -> GuidedMixtureModel:
        """``model_fn(sample, timestep)`` (:data:`schedules.sampling.ModelFn`): the guided output
        of ``prediction_type`` for the N examples of classes ``labels``
        (a :class:`GuidedMixtureModel`)."""
        return GuidedMixtureModel(self, labels.long(), guidance, prediction_type)

    def iid_model_fn(self, prediction_type: str = "epsilon") -> ModelFn:
        """Unconditional exact outputs for samples of any shape made of i.i.d. draws.

        Every run of ``dim`` consecutive elements is one draw from the mixture, so
        ``log p_t`` is a sum over draws and the score (hence every output) is taken draw by draw.
        With ``dim=1`` every element is a draw: any sample shape works. The output has
        ``sample``'s shape and dtype.
        """

        def fn(sample: torch.Tensor, timestep: Any) -> torch.Tensor:
            draws = sample.reshape(-1, self.dim)
            out = self.predict(draws, timestep, None, prediction_type)
            return out.reshape(sample.shape).to(sample.dtype)

        return fn


@dataclass(frozen=True)
class GuidedMixtureModel:
    """The guided model of a :class:`GaussianMixtureDiffusion` for N examples of given classes.

    Called as ``model_fn(sample, timestep)``: ``sample`` is the scheduler's model input (VP
    space), example ``i`` is of class ``labels[i]``; the output has ``sample``'s shape and dtype.
    :meth:`select` gives the model of a subset of the examples
    (:class:`schedules.sampling.SelectableModel`).
    """

    mixture: GaussianMixtureDiffusion
    labels: torch.Tensor
    guidance: float
    prediction_type: str = "epsilon"

    def __call__(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        if sample.shape[0] != self.labels.numel():
            raise ValueError(
                f"model_fn built for {self.labels.numel()} examples, got {sample.shape[0]}"
            )
        out = self.mixture.guided(
            sample, timestep, self.labels, self.guidance, self.prediction_type
        )
        return out.to(sample.dtype)

    def select(self, index: torch.Tensor) -> GuidedMixtureModel:
        """The model of examples ``index``."""
        return GuidedMixtureModel(
            self.mixture, self.labels[index], self.guidance, self.prediction_type
        )


def record_trajectories(
    teacher_scheduler: Any,
    model_fn: ModelFn,
    noise: torch.Tensor,
    num_inference_steps: int | None = None,
    timesteps: Sequence[int] | None = None,
) -> Trajectories:
    """Run ``teacher_scheduler`` under ``TrajectoryRecorder`` (float64) and return its trajectories.

    Give the teacher's step count, or its explicit ``timesteps``
    (as :func:`schedules.sampling.run_sampler`).
    """
    recorder = TrajectoryRecorder(teacher_scheduler, dtype=torch.float64)
    run_sampler(recorder, model_fn, noise, num_inference_steps, timesteps)
    return recorder.trajectories()


def ays_timesteps(num_steps: int, alphas_cumprod: torch.Tensor | None = None) -> list[int]:
    """Align-Your-Steps timesteps for SD (Sabour et al., 2024) at any step count.

    Starts from diffusers' ``AysSchedules["StableDiffusionTimesteps"]`` (10 steps). Other counts
    interpolate ``log sigma`` linearly over the normalized step index, as the paper's
    ``loglinear_interp`` does, and map the sigmas back to the nearest integer timesteps.
    """
    import numpy as np
    from diffusers.schedulers import AysSchedules

    base = list(AysSchedules["StableDiffusionTimesteps"])
    if num_steps == len(base):
        return base
    abar = (alphas_cumprod if alphas_cumprod is not None else sd_alphas_cumprod()).numpy()
    log_sigmas = 0.5 * (np.log1p(-abar) - np.log(abar))
    base_log_sigma = log_sigmas[np.array(base)]
    xs = np.linspace(0.0, 1.0, len(base))
    new_xs = np.linspace(0.0, 1.0, num_steps)
    new_log_sigma = np.interp(new_xs, xs, base_log_sigma)
    return [int(np.argmin(np.abs(log_sigmas - ls))) for ls in new_log_sigma]
