"""The benchmarks' model, as a worker would load it: a diffusers folder and its OLSS schedules.

The pipeline has Stable Diffusion 1.5's, 2.1's or SDXL base's architecture (or a tiny one:
:data:`devtools.sd_configs.TINY`, ``TINY_SD2``, ``TINY_SDXL``) with random weights: nothing is
downloaded, and the compute cost equals the real model's; the images are noise. It is saved as a
diffusers folder, so the benchmarks load it through the worker's own
``workers.startup.load_model``. The OLSS schedules are fitted on the analytic Gaussian-mixture
testbed (:mod:`devtools.analytic`) with SD's noise schedule and the model's ``prediction_type``,
and put in a registry folder under the model's key: a schedule calibrated on random weights would
mean nothing, and a step costs one UNet call whatever its coefficients.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DiffusionPipeline,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from devtools.sd_configs import (
    SD_DDIM_CONFIG,
    SD_TOKENIZER_MAX_LENGTH,
    SDXL_EULER_CONFIG,
    ArchSpec,
)
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


def _text_config(config: dict, tokenizer: Any) -> CLIPTextConfig:
    """``config`` with ``tokenizer``'s special tokens and a vocabulary that holds its ids."""
    vocab = len(tokenizer.get_vocab())
    return CLIPTextConfig(
        **{**config, "vocab_size": max(config["vocab_size"], vocab)},
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_pipeline(
    spec: ArchSpec, device: torch.device, work_dir: Path, seed: int = 0
) -> DiffusionPipeline:
    """Random-weights fp32 pipeline of ``spec``'s architecture, created directly on ``device``
    (no host copy: a few seconds for SD 1.5 on a GPU), in eval mode: SDXL's when ``spec`` has a
    second text encoder, else SD's. The tokenizers are the local byte-level CLIP tokenizer
    padded to SD's 77 tokens."""
    from devtools.tiny_pipeline import write_byte_level_tokenizer

    tokenizer = write_byte_level_tokenizer(work_dir / "tokenizer", SD_TOKENIZER_MAX_LENGTH)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device):
        unet = UNet2DConditionModel(**spec.unet).eval()
        vae = AutoencoderKL(**spec.vae).eval()
        text_encoder = CLIPTextModel(_text_config(spec.text, tokenizer)).eval()
        if spec.text_2 is not None:
            text_encoder_2 = CLIPTextModelWithProjection(
                _text_config(spec.text_2, tokenizer)
            ).eval()
    if spec.text_2 is not None:
        return StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=text_encoder,
            text_encoder_2=text_encoder_2,
            tokenizer=tokenizer,
            tokenizer_2=tokenizer,
            unet=unet,
            scheduler=EulerDiscreteScheduler(**SDXL_EULER_CONFIG),
            force_zeros_for_empty_prompt=True,
        )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**teacher_config(spec)),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def parameter_counts(pipe: DiffusionPipeline) -> dict[str, int]:
    """Parameters of each model of ``pipe`` (SDXL's second text encoder too)."""
    return {
        name: sum(p.numel() for p in getattr(pipe, name).parameters())
        for name in ("unet", "vae", "text_encoder", "text_encoder_2")
        if getattr(pipe, name, None) is not None
    }


def teacher_config(spec: ArchSpec) -> dict[str, Any]:
    """SD's DDIM scheduler config predicting what ``spec``'s UNet predicts (SD 1.5's and SD
    2.1's own scheduler; SDXL's betas are the same)."""
    return {**SD_DDIM_CONFIG, "prediction_type": spec.prediction_type}


def fit_bench_schedules(steps: Sequence[int], spec: ArchSpec, model_id: str) -> list[Schedule]:
    """One OLSS schedule per step count for ``model_id``, with a valid fitted structure.

    Fitted (``method="uniform"``) on 64 DDIM-50 trajectories of the analytic Gaussian-mixture
    testbed at guidance 7.5, with SD's noise schedule, the testbed's exact model returning what
    ``spec``'s UNet predicts (``eps`` or ``v``: a schedule serves only its prediction type).
    """
    from devtools.analytic import GaussianMixtureDiffusion, record_trajectories
    from schedules import search

    testbed = GaussianMixtureDiffusion()
    labels = torch.arange(CALIBRATION_EXAMPLES) % testbed.config.num_classes
    noise = torch.randn(
        CALIBRATION_EXAMPLES, testbed.dim, generator=torch.Generator().manual_seed(0)
    )
    teacher = DDIMScheduler(**teacher_config(spec))
    model_fn = testbed.model_fn(labels, GUIDANCE_SCALE, spec.prediction_type)
    traj = record_trajectories(
        teacher, model_fn, noise.double(), num_inference_steps=50
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
