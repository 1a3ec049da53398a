"""Tiny Stable Diffusion 2.x (v-prediction) and SDXL pipelines built from configs, offline.

Random weights at the size of diffusers' own pipeline tests, so they run in milliseconds on a
CPU, with each family's real structure:

* SD 2.x: the SD 1.x layout with a UNet using linear projections and per-level attention heads,
  and a scheduler that predicts ``v`` (Salimans & Ho, 2022, "Progressive Distillation", eq. 9:
  ``v = sqrt(abar) eps - sqrt(1 - abar) x0``), optionally with zero-terminal-SNR betas and
  trailing timesteps (Lin et al., 2023, "Common Diffusion Noise Schedules and Sample Steps are
  Flawed").
* SDXL: two text encoders (the second with a projection, giving the pooled ``text_embeds``) and a
  UNet with ``addition_embed_type="text_time"``: micro-conditioning on the original size, crop and
  target size (Podell et al., 2023, "SDXL", Sec. 2.2).

The tokenizers are the byte-level CLIP tokenizer of :mod:`devtools.tiny_pipeline`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from devtools.sd_configs import SD_DDIM_CONFIG, TINY, TINY_SD2, TINY_SDXL
from devtools.tiny_pipeline import TOKENIZER_MAX_LENGTH, write_byte_level_tokenizer

TEXT_HIDDEN = TINY.text["hidden_size"]
"""The text encoders' width; the UNets (``TINY_SD2``, ``TINY_SDXL`` of
:mod:`devtools.sd_configs`) are built for it."""


def _text_config(vocab_size: int, tokenizer, projection_dim: int | None = None) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_HIDDEN,
        intermediate_size=2 * TEXT_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **({"projection_dim": projection_dim} if projection_dim else {}),
    )


def build_tiny_sd2_pipeline(
    work_dir: Path, seed: int = 0, zero_terminal_snr: bool = False
) -> StableDiffusionPipeline:
    """A random-weights SD 2.x-style pipeline (32x32 images) whose scheduler predicts ``v``."""
    torch.manual_seed(seed)
    tokenizer = write_byte_level_tokenizer(Path(work_dir) / "tokenizer_files")
    text_encoder = CLIPTextModel(_text_config(len(tokenizer.get_vocab()), tokenizer))
    unet = UNet2DConditionModel(**TINY_SD2.unet)
    scheduler_config = {**SD_DDIM_CONFIG, "prediction_type": TINY_SD2.prediction_type}
    if zero_terminal_snr:
        scheduler_config |= {"rescale_betas_zero_snr": True, "timestep_spacing": "trailing"}
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**TINY.vae),
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=DDIMScheduler(**scheduler_config),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def build_tiny_sdxl_pipeline(work_dir: Path, seed: int = 0) -> StableDiffusionXLPipeline:
    """A random-weights SDXL-style pipeline: 32x32 images, two text encoders, text-time
    micro-conditioning."""
    torch.manual_seed(seed)
    work_dir = Path(work_dir)
    tokenizer = write_byte_level_tokenizer(work_dir / "tokenizer_files")
    tokenizer_2 = write_byte_level_tokenizer(work_dir / "tokenizer_2_files")
    vocab = len(tokenizer.get_vocab())
    text_encoder = CLIPTextModel(_text_config(vocab, tokenizer))
    text_encoder_2 = CLIPTextModelWithProjection(
        _text_config(vocab, tokenizer_2, projection_dim=TEXT_HIDDEN)
    )
    unet = UNet2DConditionModel(**TINY_SDXL.unet)
    scheduler = EulerDiscreteScheduler(
        **{k: SD_DDIM_CONFIG[k] for k in ("beta_start", "beta_end", "beta_schedule")},
        steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=AutoencoderKL(**TINY.vae),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def save_tiny_sd2_pipeline(directory: Path, seed: int = 0, zero_terminal_snr: bool = False) -> Path:
    """Build the tiny SD 2.x (v-prediction) pipeline and save it as a diffusers folder."""
    directory = Path(directory)
    pipe = build_tiny_sd2_pipeline(
        directory.parent / f".{directory.name}-build", seed, zero_terminal_snr
    )
    pipe.save_pretrained(directory)
    return directory


def save_tiny_sdxl_pipeline(directory: Path, seed: int = 0) -> Path:
    """Build the tiny SDXL pipeline and save it as a diffusers folder."""
    directory = Path(directory)
    pipe = build_tiny_sdxl_pipeline(directory.parent / f".{directory.name}-build", seed)
    pipe.save_pretrained(directory)
    return directory
