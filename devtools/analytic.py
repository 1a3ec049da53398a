"""Analytic diffusion testbed: a class-conditional Gaussian mixture with an exact noise predictor.

The data distribution is a mixture of isotropic Gaussians ``N(mu_k, s_k^2 I)``; each class owns
one or a few components. Under the variance-preserving forward process of Ho et al. (2020),
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps`` (DDPM eq. 4), every marginal stays a mixture:

    p_t(x | c) = sum_{k in c} w_k N(x; sqrt(abar_t) mu_k, (abar_t s_k^2 + 1 - abar_t) I).

The minimum-MSE noise prediction is ``eps(x, t) = -sqrt(1 - abar_t) grad_x log p_t(x)``
(Song et al., 2021, "Score-Based Generative Modeling through SDEs", eq. 4 with the VP
perturbation kernel), so the "model" here is exact and costs microseconds. Classifier-free
guidance combines the conditional and unconditional predictions as
``eps_u + g (eps_c - eps_u)`` (Ho & Salimans, 2022, eq. 6).

The noise schedule is Stable Diffusion's scaled-linear one (:mod:`devtools.sd_configs`).
Everything is float64.
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
    use to turn a sigma into a float timestep. Timesteps are clamped to ``[0, 999]``.
    """
    t = timestep.to(torch.float64).clamp(0.0, alphas_cumprod.numel() - 1)
    log_snr = torch.log(alphas_cumprod) - torch.log1p(-alphas_cumprod)
    low = t.floor().long().clamp(max=alphas_cumprod.numel() - 2)
    frac = t - low
    interp = log_snr[low] * (1.0 - frac) + log_snr[low + 1] * frac
    return torch.sigmoid(interp)


@dataclass(frozen=True)
class MixtureConfig:
    """A class-conditional Gaussian mixture in ``dim`` dimensions.

    Class centres are ``separation * u_c`` with ``u_c ~ N(0, I / dim)`` (so ``|centre| ~
    separation``); each of a class's ``components_per_class`` components sits at its centre plus
    ``within_class_spread * N(0, I / dim)`` and has isotropic std ``component_std``. Components
    of a class are equally weighted and classes equally likely.
    """

    dim: int = 16
    num_classes: int = 4
    components_per_class: int = 2
    separation: float = 3.0
    component_std: float = 0.3
    within_class_spread: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("dim", "num_classes", "components_per_class"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.component_std <= 0:
            raise ValueError(f"component_std must be > 0, got {self.component_std}")


class GaussianMixtureDiffusion:
    """Exact noise prediction for a class-conditional Gaussian mixture under SD's VP process."""

    def __init__(self, config: MixtureConfig | None = None) -> None:
        self.config = config or MixtureConfig()
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        centres = cfg.separation * torch.randn(
            cfg.num_classes, cfg.dim, generator=gen, dtype=torch.float64
        )
        centres = centres / math.sqrt(cfg.dim)
        offsets = torch.randn(
            cfg.num_classes, cfg.components_per_class, cfg.dim, generator=gen, dtype=torch.float64
        ) * (cfg.within_class_spread / math.sqrt(cfg.dim))
        if cfg.components_per_class == 1:
            offsets.zero_()
        self.means = (centres[:, None, :] + offsets).reshape(-1, cfg.dim)
        num_components = self.means.shape[0]
        self.stds = torch.full((num_components,), cfg.component_std, dtype=torch.float64)
        self.component_class = torch.arange(cfg.num_classes).repeat_interleave(
            cfg.components_per_class
        )
        self.log_weights = torch.full(
            (num_components,), -math.log(num_components), dtype=torch.float64
        )
        self.alphas_cumprod = sd_alphas_cumprod()

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
        return self.means[comp] + self.stds[comp, None] * noise

    def _log_terms(self, x: torch.Tensor, abar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``log w_k N(x; sqrt(abar) mu_k, v_k I)`` for every example and component, ``(N, K)``.

        Also returns the ``(N, K)`` variances ``v_k = abar s_k^2 + 1 - abar``. Squared distances
        use ``|x|^2 - 2 sqrt(abar) x.mu_k + abar |mu_k|^2`` (matrix products, float64).
        """
        abar = abar.reshape(-1, 1)
        var = abar * self.stds**2 + (1.0 - abar)
        sq = (
            (x**2).sum(-1, keepdim=True)
            - 2.0 * abar.sqrt() * (x @ self.means.T)
            + abar * (self.means**2).sum(-1)
        ).clamp(min=0.0)
        log_terms = (
            self.log_weights - 0.5 * sq / var - 0.5 * self.dim * torch.log(2 * math.pi * var)
        )
        return log_terms, var

    def _class_mask(self, log_terms: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Drop (set to -inf) the components that are not of each example's class."""
        mask = self.component_class[None, :] == labels.long().reshape(-1, 1)
        return log_terms.masked_fill(~mask, -math.inf)

    def _eps_from_terms(
        self, x: torch.Tensor, abar: torch.Tensor, log_terms: torch.Tensor, var: torch.Tensor
    ) -> torch.Tensor:
        """``sqrt(1 - abar) sum_k r_k (x - sqrt(abar) mu_k) / v_k``, ``r = softmax(log_terms)``."""
        resp = torch.exp(log_terms - torch.logsumexp(log_terms, dim=-1, keepdim=True))
        weights = resp / var
        abar = abar.reshape(-1, 1)
        score_term = x * weights.sum(-1, keepdim=True) - abar.sqrt() * (weights @ self.means)
        return (1.0 - abar).sqrt() * score_term

    def _flat_inputs(self, x: torch.Tensor, timestep: Any) -> tuple[torch.Tensor, torch.Tensor]:
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
        return flat, abar

    def log_density(
        self, x: torch.Tensor, timestep: Any, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``log p_t(x | c)``, or the unconditional ``log p_t(x)`` when ``labels`` is None."""
        flat, abar = self._flat_inputs(x, timestep)
        log_terms, _ = self._log_terms(flat, abar)
        if labels is not None:
            class_weight = self.config.components_per_class / self.log_weights.numel()
            log_terms = self._class_mask(log_terms, labels) - math.log(class_weight)
        return torch.logsumexp(log_terms, dim=-1)

    def eps(
        self, x: torch.Tensor, timestep: Any, labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Exact ``eps(x, t) = sqrt(1 - abar) sum_k r_k (x - sqrt(abar) mu_k) / v_k``.

        ``r_k`` are the posterior responsibilities of the components (of the class, if
        ``labels`` is given), computed with logsumexp. This is ``-sqrt(1 - abar) grad log p_t``
        (Song et al., 2021). ``labels=None`` gives the unconditional prediction.
        """
        flat, abar = self._flat_inputs(x, timestep)
        log_terms, var = self._log_terms(flat, abar)
        if labels is not None:
            log_terms = self._class_mask(log_terms, labels)
        return self._eps_from_terms(flat, abar, log_terms, var).reshape(x.shape)

    def guided_eps(
        self, x: torch.Tensor, timestep: Any, labels: torch.Tensor, guidance: float
    ) -> torch.Tensor:
        """Classifier-free guidance ``eps_u + g (eps_c - eps_u)`` (Ho & Salimans, 2022, eq. 6)."""
        flat, abar = self._flat_inputs(x, timestep)
        log_terms, var = self._log_terms(flat, abar)
        cond = self._eps_from_terms(flat, abar, self._class_mask(log_terms, labels), var)
        if guidance == 1.0:
            return cond.reshape(x.shape)
        uncond = self._eps_from_terms(flat, abar, log_terms, var)
        return (uncond + guidance * (cond - uncond)).reshape(x.shape)

    def model_fn(self, labels: torch.Tensor, guidance: float) -> ModelFn:
        """``model_fn(sample, timestep)`` (:data:`schedules.sampling.ModelFn`): the guided output
        for the N examples.

        ``sample`` is the scheduler's model input (VP space); example ``i`` is class ``labels[i]``.
        The output has ``sample``'s shape and dtype.
        """
        labels = labels.long()

        def fn(sample: torch.Tensor, timestep: Any) -> torch.Tensor:
            if sample.shape[0] != labels.numel():
                raise ValueError(
                    f"model_fn built for {labels.numel()} examples, got {sample.shape[0]}"
                )
            return self.guided_eps(sample, timestep, labels, guidance).to(sample.dtype)

        return fn

    def iid_model_fn(self, sample: torch.Tensor, timestep: Any) -> torch.Tensor:
        """Unconditional exact ``eps`` for samples of any shape made of i.i.d. draws.

        Every run of ``dim`` consecutive elements is one draw from the mixture, so
        ``log p_t`` is a sum over draws and the score (hence ``eps``) is taken draw by draw.
        With ``dim=1`` every element is a draw: any sample shape works. The output has
        ``sample``'s shape and dtype.
        """
        draws = sample.reshape(-1, self.dim)
        return self.eps(draws, timestep).reshape(sample.shape).to(sample.dtype)


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
