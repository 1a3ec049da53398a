"""One batched generation, timed per stage: text encode, guided denoising, VAE decode.

The worker runs the stages of ``StableDiffusionPipeline.__call__`` (or
``StableDiffusionXLPipeline.__call__``: :mod:`workers.model_family`) itself, on the pipeline's
models: :mod:`workers.text_encoding`, the loop of :class:`workers.guided_step.GuidedStep` and
:mod:`workers.image_decoding` (``tests/workers/test_inference.py`` and
``tests/workers/test_family_inference.py`` check the images against a pipeline call). Owning the
loop lets the worker run it as CUDA graphs (:mod:`workers.served_graphs`) and pad batches to a
few compiled sizes (:mod:`workers.batch_buckets`). The step hook runs after each step (after
each graph segment when graphed) and may stop the batch. Each image has its own seeded CPU
``torch.Generator``, so an image depends on its seed only, not on its batch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from diffusers import SchedulerMixin, StableDiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from olss_core.metrics import Stage
from olss_core.protocol import JobSpec
from workers.batch_buckets import BatchBuckets, pad_rows
from workers.engine import BatchInterrupted, BatchOutput, StepHook
from workers.guided_step import GuidedStep, extra_step_kwargs, run_steps
from workers.image_decoding import decode_to_pixels, to_host
from workers.served_graphs import GraphMode, LoopKey, ServedGraphs, graphable
from workers.stage_timer import StageTimer
from workers.text_encoding import Conditioning, PromptEncoder, guided_prompts, micro_conditioning


def schedule_identity(scheduler: SchedulerMixin) -> str:
    """A scheduler's class and config as one string: equal strings, equal loops."""
    return f"{type(scheduler).__name__}:{json.dumps(dict(scheduler.config), sort_keys=True)}"


class InferenceEngine:
    """Runs batches of compatible jobs on one loaded pipeline.

    Args:
        pipe: the pipeline whose models run (fast path already applied).
        device: where they run.
        graphs: which CUDA graphs to capture (:class:`workers.served_graphs.GraphMode`).
        buckets: pad batches to these sizes (with ``torch.compile`` or graphs), or ``None``.
    """

    def __init__(
        self,
        pipe: StableDiffusionPipeline,
        device: torch.device,
        graphs: GraphMode = GraphMode.OFF,
        buckets: BatchBuckets | None = None,
    ) -> None:
        self.pipe = pipe
        self.device = torch.device(device)
        self.buckets = buckets
        self.graphs = None if graphs is GraphMode.OFF else ServedGraphs(self.device, graphs)
        self.prompts = PromptEncoder(pipe)

    @property
    def native_size(self) -> tuple[int, int]:
        """(width, height) the UNet was trained at."""
        side = self.pipe.unet.config.sample_size * self.pipe.vae_scale_factor
        return side, side

    def finish_warm_up(self) -> None:
        """Capture no new graphs (unwarmed shapes run eagerly)."""
        if self.graphs is not None:
            self.graphs.freeze()

    def generate(
        self,
        specs: Sequence[JobSpec],
        scheduler: SchedulerMixin,
        on_step: StepHook | None = None,
    ) -> BatchOutput:
        """Generate every image of ``specs`` (compatible jobs) in one batch."""
        first = specs[0]
        prompts = [spec.prompt for spec in specs for _ in spec.seeds]
        negatives = [spec.negative_prompt or "" for spec in specs for _ in spec.seeds]
        seeds = [seed for spec in specs for seed in spec.seeds]
        count = len(seeds)
        rows = self.buckets.padded(count) if self.buckets else count
        guided = first.guidance_scale > 1.0 and self.pipe.unet.config.time_cond_proj_dim is None
        timer = StageTimer(self.device)
        sizes = [(spec.height, spec.width) for spec in specs for _ in spec.seeds]
        with torch.inference_mode():
            with timer.stage(Stage.ENCODE):
                embeds = self._encode(prompts, negatives, sizes, guided, rows)
            with timer.stage(Stage.DENOISE):
                latents = self._denoise(first, scheduler, seeds, embeds, rows, guided, on_step)
            with timer.stage(Stage.DECODE):
                pixels = to_host(self._decode(latents[:count]))
        flat = [Image.fromarray(image) for image in pixels]
        per_job: list[list[Image.Image]] = []
        for spec in specs:
            per_job.append(flat[: spec.num_images])
            flat = flat[spec.num_images :]
        durations = {Stage(name): seconds for name, seconds in timer.durations().items()}
        return BatchOutput(images=per_job, durations=durations)

    # -- stages -----------------------------------------------------------------------------

    def _encode(
        self,
        prompts: list[str],
        negatives: list[str],
        sizes: list[tuple[int, int]],
        guided: bool,
        rows: int,
    ) -> Conditioning:
        """Conditioning of ``rows`` (or 2 ``rows``) UNet rows, padded with the last image's;
        ``sizes`` is each image's (height, width), its SDXL micro-conditioning."""
        padding = rows - len(prompts)
        negatives = negatives + negatives[-1:] * padding
        texts = guided_prompts(prompts + prompts[-1:] * padding, negatives, guided)
        inputs = [x.to(self.device) for x in self.prompts.inputs(texts)]
        encode = self.prompts.encode
        stage = self.graphs.stage("encode", encode, inputs) if self.graphs else None
        # the next graph replay may reuse a captured output's memory
        encoded = encode(*inputs) if stage is None else stage(*inputs).clone()
        if not self.prompts.added_conditioning:
            return Conditioning(encoded)
        time_ids = [micro_conditioning(*size) for size in sizes + sizes[-1:] * padding]
        empty = [not negative for negative in negatives] if guided else []
        repeat = 2 if guided else 1
        return self.prompts.conditioning(
            encoded, texts, empty + [False] * rows, time_ids * repeat
        )

    def _denoise(
        self,
        first: JobSpec,
        scheduler: SchedulerMixin,
        seeds: list[int],
        embeds: Conditioning,
        rows: int,
        guided: bool,
        on_step: StepHook | None,
    ) -> torch.Tensor:
        """The final latents of ``rows`` rows (the real ones first) for the seeds' noise."""
        pipe = self.pipe
        scheduler.set_timesteps(first.steps, device=self.device)
        generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
        shape = (
            len(seeds),
            pipe.unet.config.in_channels,
            first.height // pipe.vae_scale_factor,
            first.width // pipe.vae_scale_factor,
        )
        noise = randn_tensor(shape, generator=generators, device=self.device, dtype=embeds.dtype)
        latents = pad_rows(noise, rows) * scheduler.init_noise_sigma
        guidance = first.guidance_scale if guided else None
        timestep_cond = self._timestep_cond(first.guidance_scale, rows, latents.dtype)
        if self.graphs is not None and graphable(scheduler) and timestep_cond is None:
            key = LoopKey(rows, first.height, first.width, schedule_identity(scheduler), guidance)

            def make_step() -> GuidedStep:
                private = type(scheduler).from_config(scheduler.config)
                private.set_timesteps(first.steps, device=self.device)
                return GuidedStep(pipe.unet, private, guidance)

            loop = self.graphs.loop(key, make_step, latents, embeds)
            if loop is not None:
                return loop.run(latents, embeds, on_step).clone()
        step = GuidedStep(pipe.unet, scheduler, guidance, timestep_cond,
                          extra_step_kwargs(scheduler, generators))
        total = len(scheduler.timesteps)
        for i in range(total):
            latents = run_steps(step, latents, embeds, range(i, i + 1))
            if on_step is not None and not on_step(i + 1, total, latents):
                raise BatchInterrupted
        return latents

    def _timestep_cond(self, guidance: float, rows: int, dtype: torch.dtype) -> torch.Tensor | None:
        """The guidance embedding of guidance-distilled UNets (``time_cond_proj_dim``), as
        ``StableDiffusionPipeline`` computes it; ``None`` for the others."""
        dim = self.pipe.unet.config.time_cond_proj_dim
        if dim is None:
            return None
        scale = torch.tensor(guidance - 1).repeat(rows)
        embedding = self.pipe.get_guidance_scale_embedding(scale, embedding_dim=dim)
        return embedding.to(device=self.device, dtype=dtype)

    def _decode(self, latents: torch.Tensor) -> torch.Tensor:
        """uint8 pixels of ``latents``; with buckets, in chunks of bucket sizes."""
        if self.buckets is None:
            return decode_to_pixels(self.pipe.vae, latents)
        count = latents.shape[0]
        chunks = self.buckets.chunks(count)
        padded = pad_rows(latents, sum(chunks))
        parts, start = [], 0
        for size in chunks:
            part = padded[start : start + size]
            start += size
            graphs = self.graphs
            stage = graphs.stage("decode", self._decode_pixels, [part]) if graphs else None
            parts.append(stage(part).clone() if stage else self._decode_pixels(part))
        return torch.cat(parts)[:count]

    def _decode_pixels(self, latents: torch.Tensor) -> torch.Tensor:
        return decode_to_pixels(self.pipe.vae, latents)
