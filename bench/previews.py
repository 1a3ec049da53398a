"""Step previews (``workers.previews``): how good the fitted projection is, what a preview costs
per step, and what previews cost the jobs that did not ask for them.

    python -m bench.previews [--rounds 30] [--batch 8] [--sd15-fit]

1. *Fit*: the projection of the embedded ``olss-digits`` model fitted from its own VAE (the
   worker's start-up fit), its time, and its error on real generations: final and intermediate
   latents of 40 prompts, the preview against the VAE decode of the same latents and against
   the final image, area-pooled to the latent grid (PSNR; R^2: 1 exact, 0 no better than the
   mean colour). ``--sd15-fit`` also fits
   Stable Diffusion 1.5's VAE architecture (random weights: time only) at 512 px.
2. *Per step*: at olss-digits' shape (8x8 latents, a 16 px preview) and at SD 1.5's (64x64
   latents, a 128 px preview): the serving thread's part (``StepPreviews.send``: project one
   row, queue it) and the preview thread's (WebP encode), and the preview's size in the event.
3. *Jobs that did not ask*: batches of ``--batch`` olss-digits jobs through the worker's own
   engine (``workers.startup.load_model``) and step hook (``BatchProgress``, real Redis
   events), the 5-step OLSS schedule: the hook as before previews (none wired), previews wired
   but none asked, one job of the batch asking on every step, every job asking. Rounds
   interleave the four, each taking each place in turn, so load drifts hit all alike; the
   table gives each one's median batch time, its ratio to the batch without previews of the
   same round, and the time the serving thread spends in the step hook per step (where
   previews add their cost to every job of the batch). A job that did not ask finishes with
   its batch, so the batch time is its latency.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from bench.digits_eval import eval_cases
from olss_core.metrics import WorkerMetrics
from olss_core.protocol import JobSpec
from olss_core.settings import Settings
from tests.support.queued_jobs import enqueue
from tests.support.redis_db import clean_db, redis_url
from tests.support.worker_parts import receive_all
from workers.batch_progress import BatchProgress
from workers.fault_injection import FaultInjection
from workers.image_decoding import decode_to_pixels
from workers.leases import LeaseTracker
from workers.lifecycle import JobLifecycle
from workers.previews import (
    LatentProjection,
    StepPreviews,
    encode_preview,
    fit_projection,
    preview_size,
)
from workers.startup import load_model

BENCH_DB = 7
MODEL = "olss-digits"
STEPS = 5
GUIDANCE = 4.0
FIT_SAMPLES = 40
SCENARIOS = ("before previews", "wired, none asks", "one job asks", "every job asks")


def _median_ms(run: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _r2(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """1 - MSE / variance of ``target``: 1 is exact, 0 is no better than its mean colour."""
    mse = float(((predicted - target) ** 2).mean())
    return 1 - mse / float(((target - target.mean()) ** 2).mean())


def fit_quality(pipe, projection: LatentProjection) -> list[tuple[str, float, float, float]]:
    """(latents, PSNR dB and R^2 against the decode of those latents, R^2 against the final
    image) of the projection on real olss-digits generations (DDIM, 20 steps), each target
    area-pooled to the latent grid."""
    cases = eval_cases(FIT_SAMPLES, seed_offset=5000)
    captured: dict[int, torch.Tensor] = {}

    def keep(_pipe, step: int, _t, kwargs):
        captured[step] = kwargs["latents"].detach().clone()
        return kwargs

    pipe(
        [case.prompt for case in cases], num_inference_steps=20, guidance_scale=GUIDANCE,
        generator=[torch.Generator().manual_seed(case.seed) for case in cases],
        output_type="latent", callback_on_step_end=keep,
    )

    def pooled_decode(latents: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            decoded = decode_to_pixels(pipe.vae, latents).permute(0, 3, 1, 2).float() / 255
        return torch.nn.functional.adaptive_avg_pool2d(decoded, latents.shape[-2:])

    final = pooled_decode(captured[19])
    rows = []
    for step in (4, 9, 14, 19):
        latents = captured[step]
        target = pooled_decode(latents)
        predicted = projection.apply(latents).permute(0, 3, 1, 2).float() / 255
        psnr = 10 * torch.log10(1 / ((predicted - target) ** 2).mean()).item()
        rows.append((f"after step {step + 1} of 20", psnr, _r2(predicted, target),
                     _r2(predicted, final)))
    return rows


def step_cost(projection: LatentProjection, side: int, latent_side: int, repeat: int
              ) -> tuple[float, float, int]:
    """(serving-thread ms, encode ms, base64 bytes) of one preview at this shape."""
    latents = torch.randn(8, 4, latent_side, latent_side)
    previews = StepPreviews(projection, lambda *_: None)

    class Job:
        def __init__(self) -> None:
            self.id = "job"
            self.spec = JobSpec(model="m", prompt="x", width=side, height=side, steps=5,
                                guidance_scale=1.0, seed=0)

    jobs = [Job()]
    serving = _median_ms(lambda: previews.send(jobs, {"job": 3}, latents, 1, 5), repeat)
    previews.close()
    pixels = projection.apply(latents[:1])[0].numpy()
    size = preview_size(side, side)
    encode = _median_ms(lambda: encode_preview(pixels, size), repeat)
    return serving, encode, len(encode_preview(pixels, size).data_base64)


class TimedHook:
    """The step hook, timing each of its calls (what the serving thread spends in it)."""

    def __init__(self, hook: BatchProgress) -> None:
        self.hook = hook
        self.seconds: list[float] = []

    def __call__(self, step: int, total: int, latents: object = None) -> bool:
        start = time.perf_counter()
        try:
            return self.hook(step, total, latents)
        finally:
            self.seconds.append(time.perf_counter() - start)


def batch_times(loaded, projection: LatentProjection, settings: Settings, batch: int,
                rounds: int) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds per batch and seconds per hook call of each scenario, rounds interleaved."""
    engine = loaded.engine
    times: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    hook_times: dict[str, list[float]] = {name: [] for name in SCENARIOS}
    with clean_db(BENCH_DB) as db:
        lifecycle = JobLifecycle(db, settings, loaded.key, "bench")
        lifecycle.ensure_group()
        leases = LeaseTracker(lifecycle)
        metrics = WorkerMetrics.create(loaded.key)
        for round_ in range(rounds + 1):  # round 0 warms up, uncounted
            shift = round_ % len(SCENARIOS)  # each scenario takes each place in turn
            for name in SCENARIOS[shift:] + SCENARIOS[:shift]:
                asking = {"one job asks": 1, "every job asks": batch}.get(name, 0)
                specs = [JobSpec(model=loaded.key, prompt=f"the number {n % 10}", width=16,
                                 height=16, steps=STEPS, guidance_scale=GUIDANCE, seed=n,
                                 preview_every=1 if n < asking else 0) for n in range(batch)]
                enqueue(settings, specs)
                jobs = [job for _, job in lifecycle.start(receive_all(lifecycle, leases))]
                previews = None if name == SCENARIOS[0] else StepPreviews(
                    projection, lifecycle.progress)
                hook = TimedHook(BatchProgress(jobs, lifecycle, leases, metrics,
                                               FaultInjection(), previews))
                start = time.perf_counter()
                engine.generate([job.spec for job in jobs], hook)
                if round_:
                    times[name].append(time.perf_counter() - start)
                    hook_times[name] += hook.seconds
                if previews is not None:
                    previews.close()
                leases.release(jobs)
                db.flushdb()
                lifecycle.ensure_group()
    return times, hook_times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=200, help="timings per step-cost cell")
    parser.add_argument("--sd15-fit", action="store_true")
    args = parser.parse_args(argv)
    settings = Settings(redis_url=redis_url(BENCH_DB), device="cpu")
    loaded = load_model(settings, MODEL)
    pipe = loaded.engine.inference.pipe
    pipe.set_progress_bar_config(disable=True)
    start = time.perf_counter()
    projection = fit_projection(pipe.vae, side=16)
    fit_s = time.perf_counter() - start

    print(f"## fit: {MODEL}, {fit_s * 1000:.0f} ms (8 synthetic 16 px images)\n")
    print("| latents | PSNR vs their decode (dB) | R^2 vs their decode | R^2 vs final image |")
    print("|---|---|---|---|")
    for label, psnr, r2, r2_final in fit_quality(pipe, projection):
        print(f"| {label} | {psnr:.1f} | {r2:.2f} | {r2_final:.2f} |")
    if args.sd15_fit:
        from diffusers import AutoencoderKL

        from devtools.sd_configs import SD15

        vae = AutoencoderKL(**SD15.vae).eval()
        start = time.perf_counter()
        fit_projection(vae, side=512)
        print(f"\nSD 1.5 VAE architecture at 512 px: fit {time.perf_counter() - start:.1f} s")

    print("\n## per step\n")
    print("| shape | serving thread (ms) | encode, preview thread (ms) | event bytes |")
    print("|---|---|---|---|")
    for label, side, latent_side in (("olss-digits 16 px, 8x8 latents", 16, 8),
                                     ("SD 1.5 512 px, 64x64 latents", 512, 64)):
        serving, encode, size = step_cost(projection, side, latent_side, args.repeat)
        print(f"| {label} | {serving:.3f} | {encode:.3f} | {size} |")

    print(f"\n## batches of {args.batch} olss-digits jobs, {STEPS} steps, "
          f"{args.rounds} rounds\n")
    times, hook_times = batch_times(loaded, projection, settings, args.batch, args.rounds)
    base = times[SCENARIOS[0]]
    print("| hook | batch p50 (ms) | batch / before previews, same round: p50 [p25, p75] "
          "| hook call p50 / p90 (ms) |")
    print("|---|---|---|---|")
    for name in SCENARIOS:
        ratios = sorted(t / b for t, b in zip(times[name], base, strict=True))
        q1, _, q3 = statistics.quantiles(ratios, n=4)
        calls = statistics.quantiles(hook_times[name], n=10)
        print(f"| {name} | {statistics.median(times[name]) * 1000:.1f} | "
              f"{statistics.median(ratios):.3f} [{q1:.3f}, {q3:.3f}] | "
              f"{statistics.median(hook_times[name]) * 1000:.2f} / {calls[-1] * 1000:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
