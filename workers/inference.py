"""One batched generation, timed per stage: text encode, guided denoising, VAE decode.

Denoising is the diffusers pipeline itself, fed precomputed prompt embeddings and asked for
latents (``output_type="latent"``); its ``callback_on_step_end`` reports progress and stops the
loop when every job of the batch was canceled. Each image has its own seeded CPU
``torch.Generator``, so an image depends on its seed only, not on its batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from diffusers import SchedulerMixin, StableDiffusionPipeline
from PIL import Image

from olss_core.metrics import Stage
from olss_core.protocol import JobSpec
from workers.engine import BatchInterrupted, BatchOutput, StepHook
from workers.stage_timer import StageTimer


class InferenceEngine:
    """Runs batches of compatible jobs on one loaded pipeline."""

    def __init__(self, pipe: StableDiffusionPipeline, device: torch.device) -> None:
        self.pipe = pipe
        self.device = device

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def generate(
        self,
        specs: Sequence[JobSpec],
        scheduler: SchedulerMixin,
        on_step: StepHook | None = None,
    ) -> BatchOutput:
        """Generate every image of ``specs`` (compatible jobs) in one pipeline call."""
        first = specs[0]
        prompts = [spec.prompt for spec in specs for _ in spec.seeds]
        negatives = [spec.negative_prompt or "" for spec in specs for _ in spec.seeds]
        generators = [torch.Generator("cpu").manual_seed(s) for spec in specs for s in spec.seeds]
        pipe = self.pipe
        guided = first.guidance_scale > 1.0 and pipe.unet.config.time_cond_proj_dim is None
        timer = StageTimer(self.device)

        def step_end(p: StableDiffusionPipeline, step: int, _t: Any, _kw: dict) -> dict:
            if on_step is not None and not on_step(step + 1, p.num_timesteps):
                p._interrupt = True
            return {}

        with torch.inference_mode():
            with timer.stage(Stage.ENCODE):
                embeds, negative_embeds = pipe.encode_prompt(
                    prompts, self.device, 1, guided, negatives if guided else None
                )
            if pipe.scheduler is not scheduler:
                pipe.scheduler = scheduler
            with timer.stage(Stage.DENOISE):
                latents = pipe(
                    prompt_embeds=embeds,
                    negative_prompt_embeds=negative_embeds,
                    width=first.width,
                    height=first.height,
                    num_inference_steps=first.steps,
                    guidance_scale=first.guidance_scale,
                    generator=generators,
                    output_type="latent",
                    callback_on_step_end=step_end,
                ).images
            if pipe.interrupt:
                raise BatchInterrupted
            with timer.stage(Stage.DECODE):
                decoded = pipe.vae.decode(
                    latents / pipe.vae.config.scaling_factor, return_dict=False
                )[0]
                flat = pipe.image_processor.postprocess(decoded, output_type="pil")
        per_job: list[list[Image.Image]] = []
        for spec in specs:
            per_job.append(flat[: spec.num_images])
            flat = flat[spec.num_images :]
        durations = {Stage(name): seconds for name, seconds in timer.durations().items()}
        return BatchOutput(images=per_job, durations=durations)
