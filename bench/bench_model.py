"""The benchmarks' model, as a worker would load it: a diffusers folder and its OLSS schedules.

The pipeline has Stable Diffusion 1.5's architecture (or the tiny one,
:data:`devtools.sd_configs.TINY`) with random weights: nothing is downloaded, and the compute cost
equals the real model's; the images are noise. It is saved as a diffusers folder, so the
benchmarks load it through the worker's own ``workers.startup.load_model``. The OLSS schedules are
fitted on the analytic Gaussian-mixture testbed (:mod:`devtools.analytic`) with SD's noise
schedule and put in a registry folder under the model's key: a schedule calibrated on random
weights would mean nothing, and a step costs one UNet call whatever its coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from devtools.sd_configs import SD_DDIM_CONFIG, SD_TOKENIZER_MAX_LENGTH, ArchSpec
from schedules import Schedule, ScheduleRegistry, model_key

GUIDANCE_SCALE = 7.5
CALIBRATION_EXAMPLES = 64


@dataclass(frozen=True)
class BenchModel:
    """A saved benchmark model: its folder, its schedule registry and its registry key."""

    spec: ArchSpec
    folder: Path
    schedule_dir: Path

    @property
    def key(self) -> str:
        return model_key(self.folder)


def build_pipeline(
    spec: ArchSpec, device: torch.device, work_dir: Path, seed: int = 0
) -> StableDiffusionPipeline:
    """Random-weights fp32 pipeline of ``spec``'s architecture, created directly on ``device``
    (no host copy: a few seconds for SD 1.5 on a GPU), in eval mode. The tokenizer is the local
    byte-level CLIP tokenizer padded to SD's 77 tokens."""
    from devtools.tiny_pipeline import write_byte_level_tokenizer

    tokenizer = write_byte_level_tokenizer(work_dir / "tokenizer", SD_TOKENIZER_MAX_LENGTH)
    vocab = len(tokenizer.get_vocab())
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.unet)
        vae = AutoencoderKL(**spec.vae)
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                **{**spec.text, "vocab_size": max(spec.text["vocab_size"], vocab)},
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id,
            )
        )
    pipe = StableDiffusionPipeline(
        vae=vae.eval(),
        text_encoder=text_encoder.eval(),
        tokenizer=tokenizer,
        unet=unet.eval(),
        scheduler=DDIMScheduler(**SD_DDIM_CONFIG),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    return pipe


def parameter_counts(pipe: StableDiffusionPipeline) -> dict[str, int]:
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder")
    }


def fit_bench_schedules(steps: Sequence[int], spec: ArchSpec, model_id: str) -> list[Schedule]:
    """One OLSS schedule per step count for ``model_id``, with a valid fitted structure.

    Fitted (``method="uniform"``) on 64 DDIM-50 trajectories of the analytic Gaussian-mixture
    testbed at guidance 7.5, with SD's noise schedule.
    """
    from devtools.analytic import GaussianMixtureDiffusion, record_trajectories
    from schedules import search

    testbed = GaussianMixtureDiffusion()
    labels = torch.arange(CALIBRATION_EXAMPLES) % testbed.config.num_classes
    noise = torch.randn(
        CALIBRATION_EXAMPLES, testbed.dim, generator=torch.Generator().manual_seed(0)
    )
    teacher = DDIMScheduler(**SD_DDIM_CONFIG)
    traj = record_trajectories(
        teacher, testbed.model_fn(labels, GUIDANCE_SCALE), noise.double(), num_inference_steps=50
    ).with_metadata(
        model_id=model_id,
        guidance_scale=GUIDANCE_SCALE,
        resolution=(spec.resolution, spec.resolution),
    )
    return [search(traj, num_steps=k, method="uniform") for k in sorted(set(steps))]


def save_bench_model(
    spec: ArchSpec,
    work_dir: Path,
    olss_steps: Sequence[int],
    device: torch.device,
    dtype: torch.dtype = torch.float32,
    seed: int = 0,
) -> BenchModel:
    """Build ``spec`` on ``device``, save it in ``dtype`` under ``work_dir`` and fit its OLSS
    schedules into ``work_dir / "schedules"``."""
    folder = work_dir / spec.name
    pipe = build_pipeline(spec, device, work_dir / "build", seed)
    pipe.to(dtype=dtype).save_pretrained(folder)
    del pipe
    model = BenchModel(spec, folder, work_dir / "schedules")
    registry = ScheduleRegistry(model.schedule_dir)
    for schedule in fit_bench_schedules(olss_steps, spec, model.key):
        registry.put(schedule)
    return model
