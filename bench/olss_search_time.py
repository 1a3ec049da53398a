"""OLSS path search time: Gram-matrix search vs a plain ``torch.linalg.lstsq`` search.

Both run the paper's search (bisection on the error bound D with a greedy walk, Duan et al.,
arXiv:2305.14677) through the same code (:func:`schedules.paper_search.paper_path`) with the same
per-prefix cache; only the candidate scorer differs:

* Gram: one float64 pass builds the Gram matrix of all recorded vectors, then each greedy step
  is one tiny solve for every candidate target at once
  (:class:`schedules.paper_search.GramFitter`).
* lstsq: each greedy step solves ``torch.linalg.lstsq`` over the raw data (N x latent elements
  rows) for every candidate target.

Trajectories are synthetic but structured like a DDIM run of a Stable Diffusion model: SD's
noise schedule, T teacher steps, N examples of 4x64x64 latents, and a noise prediction that is
partly linear and partly non-linear in the sample. Usage::

    python -m bench.olss_search_time                     # N=32, 4x64x64, T=100, k=5,10,20
    python -m bench.olss_search_time --n 4 --latent 4 16 16 --lstsq-steps 5 10 20   # quick
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import numpy as np
import torch
from diffusers import DDIMScheduler

from devtools.sd_configs import SD_DDIM_CONFIG
from schedules.gram import gram_matrix
from schedules.paper_search import GramFitter, paper_path
from schedules.sampling import run_sampler
from schedules.trajectory import Trajectories, TrajectoryRecorder


def synthetic_trajectories(n: int, latent: tuple[int, ...], steps: int, seed: int) -> Trajectories:
    """A DDIM-like run in float32: ``e = 0.9 eps_true(x) + 0.1 tanh(2 x)``, then a DDIM step."""
    teacher = DDIMScheduler(**SD_DDIM_CONFIG)
    g = torch.Generator().manual_seed(seed)
    clean = torch.randn(n, *latent, generator=g).cumsum(-1) / latent[-1] ** 0.5  # smooth "images"
    noise = torch.randn(n, *latent, generator=g)

    def model_fn(x: torch.Tensor, t: int) -> torch.Tensor:
        ab = float(teacher.alphas_cumprod[t])
        eps = (x - ab**0.5 * clean) / (1 - ab) ** 0.5
        return 0.9 * eps + 0.1 * torch.tanh(2 * x)

    recorder = TrajectoryRecorder(teacher)
    run_sampler(recorder, model_fn, noise, steps)
    return recorder.trajectories()


class LstsqFitter:
    """Candidate scorer that runs ``torch.linalg.lstsq`` on the raw data, float64."""

    def __init__(self, traj: Trajectories, target_chunk: int = 8) -> None:
        self.traj = traj
        self.num_steps = traj.num_steps
        self.target_chunk = target_chunk
        self.calls = 0

    def candidate_errors(self, prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        traj = self.traj
        columns = [traj.samples[0], *(traj.outputs[p] for p in prefix)]
        A = torch.stack([c.reshape(-1) for c in columns], dim=1).to(torch.float64)
        targets = np.arange(prefix[-1] + 1, self.num_steps + 1)
        errors = []
        for start in range(0, len(targets), self.target_chunk):
            chunk = targets[start : start + self.target_chunk]
            Y = torch.stack([traj.samples[j].reshape(-1) for j in chunk], dim=1).to(torch.float64)
            W = torch.linalg.lstsq(A, Y).solution
            residual = (Y - A @ W).norm(dim=0) / Y.norm(dim=0)
            errors.append(residual.numpy())
        return targets, np.concatenate(errors)


class CountingGramFitter(GramFitter):
    calls = 0

    def candidate_errors(self, prefix: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return super().candidate_errors(prefix)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (
        f"{platform.node()} ({cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32, help="examples N")
    parser.add_argument("--latent", type=int, nargs="+", default=[4, 64, 64])
    parser.add_argument("--teacher-steps", type=int, default=100, help="T")
    parser.add_argument("--steps", type=int, nargs="+", default=[5, 10, 20], help="k (Gram)")
    parser.add_argument(
        "--lstsq-steps", type=int, nargs="*", default=[5], help="k for the lstsq baseline"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    traj = synthetic_trajectories(args.n, tuple(args.latent), args.teacher_steps, args.seed)
    elements = traj.samples[0].numel()
    print(f"machine: {machine()}")
    print(f"N={args.n}, latent={'x'.join(map(str, args.latent))}, T={args.teacher_steps}")
    print(f"rows per fit (N x latent elements) = {elements}")

    start = time.perf_counter()
    gram = gram_matrix(traj)
    gram_pass = time.perf_counter() - start
    print(f"Gram pass ({2 * args.teacher_steps + 1}^2 float64): {gram_pass:.2f} s")

    rows = []
    for k in args.steps:
        fitter = CountingGramFitter(gram)
        start = time.perf_counter()
        path, bound = paper_path(fitter, k)
        gram_time = time.perf_counter() - start
        lstsq_time = None
        same = ""
        if k in args.lstsq_steps:
            lstsq = LstsqFitter(traj)
            start = time.perf_counter()
            lstsq_path, _ = paper_path(lstsq, k)
            lstsq_time = time.perf_counter() - start
            same = "yes" if lstsq_path == path else f"no ({lstsq_path})"
        rows.append((k, fitter.calls, gram_time, lstsq_time, same, path, bound))

    print()
    print("| k | greedy solves | Gram search (s) | lstsq search (s) | lstsq / Gram | same path |")
    print("|---|---|---|---|---|---|")
    for k, calls, gram_time, lstsq_time, same, _, _ in rows:
        lstsq_text = f"{lstsq_time:.2f}" if lstsq_time is not None else "not run"
        ratio = f"{lstsq_time / gram_time:.0f}x" if lstsq_time is not None else "-"
        print(f"| {k} | {calls} | {gram_time:.3f} | {lstsq_text} | {ratio} | {same or '-'} |")
    for k, _, _, _, _, path, bound in rows:
        print(f"k={k}: path {path}, D={bound:.3g}")


if __name__ == "__main__":
    main()
