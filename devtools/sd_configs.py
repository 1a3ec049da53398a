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
    """A Stable Diffusion architecture: its models' configs and the image size."""

    name: str
    resolution: int
    unet: dict[str, Any]
    vae: dict[str, Any]
    text: dict[str, Any]
    text_2: dict[str, Any] | None = None
    """SDXL's second text encoder (with a text projection: the pooled ``text_embeds``); ``None``
    for the one-encoder families."""
    prediction_type: str = "epsilon"
    """What the UNet predicts (its scheduler config's ``prediction_type``)."""


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

SDXL_EULER_CONFIG: dict[str, Any] = {
    **SD_NOISE_SCHEDULE,
    "steps_offset": 1,
    "timestep_spacing": "leading",
    "interpolation_type": "linear",
    "use_karras_sigmas": False,
    "prediction_type": "epsilon",
}
"""SDXL base 1.0's published scheduler (``EulerDiscreteScheduler``): SD's scaled-linear betas,
epsilon prediction, ``leading`` spacing with offset 1."""

SDXL = ArchSpec(
    name="sdxl-architecture-random-weights",
    resolution=1024,
    unet={
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * 2,
        "up_block_types": ("CrossAttnUpBlock2D",) * 2 + ("UpBlock2D",),
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "transformer_layers_per_block": (1, 2, 10),
        "cross_attention_dim": 2048,
        "attention_head_dim": (5, 10, 20),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
        "norm_num_groups": 32,
    },
    vae={**SD15.vae, "sample_size": 1024, "scaling_factor": 0.13025, "force_upcast": True},
    text=SD15.text,
    text_2={
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": SD_TOKENIZER_MAX_LENGTH,
        "hidden_act": "gelu",
        "projection_dim": 1280,
    },
)
"""SDXL base 1.0 (Podell et al., 2023, arXiv:2307.01952): UNet 2567.5M parameters (three levels,
1/2/10 transformer blocks, cross-attention on the two encoders' 768 + 1280 = 2048 features), VAE
83.7M (SD's layout, scaling factor 0.13025, decoded in fp32: ``force_upcast``), CLIP ViT-L/14
123.1M and OpenCLIP ViT-bigG/14 with projection 694.7M. The added embedding takes the six
micro-conditioning numbers at 256 features each and the 1280 pooled ones: 6 * 256 + 1280 = 2816.
"""

TINY_SDXL = ArchSpec(
    name="tiny-sdxl-architecture-random-weights",
    resolution=TINY.resolution,
    unet={
        **TINY.unet,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
        "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
        "transformer_layers_per_block": (1, 2),
        "cross_attention_dim": 2 * TINY.text["hidden_size"],
        "attention_head_dim": (2, 4),
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 6 * 8 + TINY.text["hidden_size"],
    },
    vae={**TINY.vae, "scaling_factor": SDXL.vae["scaling_factor"], "force_upcast": True},
    text=TINY.text,
    text_2={**TINY.text, "hidden_act": "gelu"},
)
"""SDXL's structure at :data:`TINY`'s size: two text encoders of 32 features (the second's
projection gives the pooled embeddings), text-time micro-conditioning (6 * 8 + 32 inputs),
32x32 images."""

SD21 = ArchSpec(
    name="sd21-architecture-random-weights",
    resolution=768,
    unet={
        **SD15.unet,
        "sample_size": 96,
        "cross_attention_dim": 1024,
        "attention_head_dim": (5, 10, 20, 20),
        "use_linear_projection": True,
    },
    vae={**SD15.vae, "sample_size": 768},
    text={
        **SD15.text,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
    prediction_type="v_prediction",
)
"""SD 2.1 (768-v): UNet 865.9M parameters (SD 1.5's layout with linear attention projections and
64-feature heads, cross-attention on 1024 features), VAE 83.7M, OpenCLIP ViT-H/14's text tower
340.4M (23 of its 24 layers: SD 2 reads the penultimate one); its DDIM scheduler predicts ``v``
(Salimans & Ho, 2022)."""

TINY_SD2 = ArchSpec(
    name="tiny-sd2-architecture-random-weights",
    resolution=TINY.resolution,
    unet={**TINY.unet, "attention_head_dim": (2, 4), "use_linear_projection": True},
    vae=TINY.vae,
    text={**TINY.text, "hidden_act": "gelu"},
    prediction_type="v_prediction",
)
"""SD 2.x's structure at :data:`TINY`'s size: linear projections, per-level heads, ``v``."""
