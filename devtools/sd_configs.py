"""Stable Diffusion's scheduler constants and architecture configs, for tests and benchmarks.

Stable Diffusion (Rombach et al., CVPR 2022, arXiv:2112.10752) trains with 1000 steps of
"scaled-linear" betas, ``beta_t = linspace(sqrt(0.00085), sqrt(0.012), 1000)^2``, under the
variance-preserving process of DDPM (Ho et al., 2020, eq. 4). Development code only: production
code (``schedules``, ``workers``) reads the betas from the model's own scheduler config.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SD_NUM_TRAIN_TIMESTEPS = 1000
SD_BETA_START = 0.00085
SD_BETA_END = 0.012
SD_NOISE_SCHEDULE: dict[str, Any] = {
    "num_train_timesteps": SD_NUM_TRAIN_TIMESTEPS,
    "beta_start": SD_BETA_START,
    "beta_end": SD_BETA_END,
    "beta_schedule": "scaled_linear",
}
"""The noise schedule alone: config keys every diffusers scheduler takes."""

SD_DDIM_CONFIG: dict[str, Any] = {
    **SD_NOISE_SCHEDULE,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
"""SD 1.5's DDIM scheduler settings: epsilon prediction, ``leading`` spacing with offset 1."""

SD_TOKENIZER_MAX_LENGTH = 77
"""CLIP ViT-L/14's context length, SD's prompt length in tokens."""


def sd_scheduler(cls: type, **overrides: Any) -> Any:
    """A diffusers scheduler of class ``cls`` with Stable Diffusion's betas plus ``overrides``."""
    return cls(**{**SD_NOISE_SCHEDULE, **overrides})


@dataclass(frozen=True)
class ArchSpec:
    """A Stable Diffusion architecture: the three models' configs and the image size."""

    name: str
    resolution: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]


SD15 = ArchSpec(
    name="sd15-architecture-random-weights",
    resolution=512,
    unet={
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,
        "norm_num_groups": 32,
    },
    vae={
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": 0.18215,
    },
    text={
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": SD_TOKENIZER_MAX_LENGTH,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
)
"""SD 1.5: UNet 859.5M parameters, VAE 83.7M, CLIP ViT-L/14 text encoder 123.1M."""

# Two levels instead of four keep the module count (CPU time is mostly per-module overhead) low.
TINY = ArchSpec(
    name="tiny-sd-architecture-random-weights",
    resolution=32,
    unet={
        **SD15.unet,
        "sample_size": 16,
        "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
        "block_out_channels": (32, 64),
        "layers_per_block": 1,
        "cross_attention_dim": 32,
        "norm_num_groups": 8,
    },
    vae={
        **SD15.vae,
        "down_block_types": ("DownEncoderBlock2D",) * 2,
        "up_block_types": ("UpDecoderBlock2D",) * 2,
        "block_out_channels": (16, 32),
        "layers_per_block": 1,
        "norm_num_groups": 8,
        "sample_size": 32,
    },
    text={
        **SD15.text,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "projection_dim": 32,
    },
)
"""SD's architecture at a size that runs in milliseconds on a CPU: 32x32 images, 4x16x16
latents."""
