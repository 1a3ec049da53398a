"""Least squares from a Gram matrix: every OLSS fit as a tiny solve.

OLSS (Duan et al., arXiv:2305.14677, Eq. 8) fits step i by least squares,
``min_w ||y - A w||^2`` with design ``A = [x_0, e_{p_0}, ..., e_{p_i}]`` (flattened over all N
examples and latent elements, shared scalar weights) and target ``y = x_{p_{i+1}}``. With the Gram
matrix ``G = V V^T`` of all recorded vectors ``V = [x_0..x_T, e_0..e_{T-1}]``, computed once in
float64, every fit only needs ``G_AA w = G_Ay`` and its error
``||y - A w||^2 = ||y||^2 - 2 w.b + w.G_AA w`` (``b = G_Ay``), so a path search never touches the
raw data again.

Ill-conditioned fits are guarded: columns are scaled to unit norm, the eigenvalues of the scaled
normal matrix below ``rcond * max`` are cut off, and a tiny relative ridge is added.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from schedules.trajectory import Trajectories

DEFAULT_RCOND = 1e-12
DEFAULT_RIDGE = 1e-14
DEFAULT_MAX_COEF = 1e4


@dataclass(frozen=True)
class GramMatrix:
    """``G[a, b] = <v_a, v_b>`` over the flattened recordings, float64.

    Vector order: ``x_0 .. x_T`` at ``0 .. T``, then ``e_0 .. e_{T-1}`` at ``T+1 .. 2T``.
    """

    G: np.ndarray
    num_steps: int

    def x(self, i: int | np.ndarray) -> int | np.ndarray:
        """Index of sample ``x_i``."""
        return i

    def e(self, j: int | np.ndarray) -> int | np.ndarray:
        """Index of model output ``e_j``."""
        return self.num_steps + 1 + j


def gram_matrix(traj: Trajectories, chunk_elements: int = 1 << 18) -> GramMatrix:
    """Compute the Gram matrix of all recorded vectors once, in float64, chunked over examples.

    Memory stays at about ``(2T+1) * chunk_elements`` float64 numbers beyond the recordings.
    """
    T = traj.num_steps
    n = traj.num_examples
    per_example = int(np.prod(traj.samples.shape[2:])) if traj.samples.dim() > 2 else 1
    step = max(1, chunk_elements // max(1, per_example))
    G = torch.zeros(2 * T + 1, 2 * T + 1, dtype=torch.float64)
    for start in range(0, n, step):
        block = torch.cat(
            [
                traj.samples[:, start : start + step].reshape(T + 1, -1),
                traj.outputs[:, start : start + step].reshape(T, -1),
            ]
        ).to(torch.float64)
        G += block @ block.T
    G = 0.5 * (G + G.T)
    return GramMatrix(G=G.numpy(), num_steps=T)


@dataclass(frozen=True)
class Solution:
    """Least-squares solutions for several targets sharing one design.

    Args:
        weights: ``(m, c)``: one weight column per target.
        errors: ``(c,)`` squared residual norms ``||y - A w||^2``.
        relative_errors: ``(c,)`` ``sqrt(errors / ||y||^2)`` (relative RMS error).
        condition_number: of the column-scaled design ``A`` (square root of that of ``A^T A``).
        valid: ``(c,)`` false where weights are non-finite or exceed ``max_coef``.
    """

    weights: np.ndarray
    errors: np.ndarray
    relative_errors: np.ndarray
    condition_number: float
    valid: np.ndarray


def solve_normal(
    gaa: np.ndarray,
    gay: np.ndarray,
    yy: np.ndarray,
    rcond: float = DEFAULT_RCOND,
    ridge: float = DEFAULT_RIDGE,
    max_coef: float = DEFAULT_MAX_COEF,
) -> Solution:
    """Solve ``gaa w = gay`` for every column of ``gay`` and score each fit from Gram entries.

    Args:
        gaa: ``(m, m)`` design Gram ``A^T A``.
        gay: ``(m, c)`` (or ``(m,)``) cross products ``A^T y`` for c targets.
        yy: ``(c,)`` (or scalar) target norms ``||y||^2``.
        rcond: eigenvalues of the scaled normal matrix below ``rcond * max`` are dropped.
        ridge: relative ridge added to the scaled normal matrix's diagonal.
        max_coef: weights larger than this in magnitude mark the fit invalid.
    """
    gaa = np.asarray(gaa, dtype=np.float64)
    gay = np.asarray(gay, dtype=np.float64)
    single = gay.ndim == 1
    if single:
        gay = gay[:, None]
    yy = np.atleast_1d(np.asarray(yy, dtype=np.float64))
    diag = np.sqrt(np.clip(np.diag(gaa), 1e-300, None))
    scaled = gaa / np.outer(diag, diag)
    eigvals, eigvecs = np.linalg.eigh(scaled)
    top = max(float(eigvals[-1]), 1e-300)
    bottom = float(eigvals[0])
    condition = float(np.sqrt(top / bottom)) if bottom > 0 else float("inf")
    keep = eigvals > rcond * top
    inv = np.zeros_like(eigvals)
    inv[keep] = 1.0 / (eigvals[keep] + ridge * top)
    weights = (eigvecs * inv) @ (eigvecs.T @ (gay / diag[:, None])) / diag[:, None]
    quad = np.einsum("ac,ab,bc->c", weights, gaa, weights)
    errors = np.clip(yy - 2.0 * np.einsum("ac,ac->c", weights, gay) + quad, 0.0, None)
    relative = np.sqrt(errors / np.clip(yy, 1e-300, None))
    valid = np.all(np.isfinite(weights), axis=0) & (np.max(np.abs(weights), axis=0) <= max_coef)
    valid &= np.isfinite(errors)
    if single:
        return Solution(weights[:, 0], errors, relative, condition, valid)
    return Solution(weights, errors, relative, condition, valid)


def solve_from_gram(
    gram: GramMatrix, design: list[int], targets: list[int] | np.ndarray, **kwargs: float
) -> Solution:
    """Fit each target vector index in ``targets`` on the ``design`` vector indices."""
    design_idx = np.asarray(design)
    target_idx = np.asarray(targets)
    G = gram.G
    return solve_normal(
        G[np.ix_(design_idx, design_idx)],
        G[np.ix_(design_idx, target_idx)],
        G[target_idx, target_idx],
        **kwargs,
    )


def design_indices(gram: GramMatrix, path: list[int], i: int) -> list[int]:
    """Teacher-forced design of step i: ``[x_0, e_{p_0}, ..., e_{p_i}]`` (Eq. 7)."""
    return [gram.x(0), *(gram.e(p) for p in path[: i + 1])]
