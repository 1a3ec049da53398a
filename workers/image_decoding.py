"""Latents to 8-bit RGB pixels, on the device: the VAE decoder, then the 0..255 conversion.

The same numbers as ``StableDiffusionPipeline`` followed by ``VaeImageProcessor.postprocess(...,
output_type="pil")``: ``vae.decode(z / scaling_factor)`` (``z`` in the VAE's dtype),
``(x * 0.5 + 0.5).clamp(0, 1)`` in the decoder's dtype, then ``round(x * 255)`` in float32
(round half to even, as numpy rounds) and uint8, channels last. Doing the conversion on the
device copies a quarter of the float32 bytes to the host and leaves the host nothing to compute.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import AutoencoderKL


def decode_to_pixels(vae: AutoencoderKL, latents: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, 3)`` uint8 images, on the latents' device, for ``(B, C, h, w)`` latents."""
    latents = latents.to(vae.dtype)  # an SDXL VAE kept in fp32 under fp16 (``force_upcast``)
    decoded = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    unit = (decoded * 0.5 + 0.5).clamp(0, 1).float()
    return (unit * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def to_host(pixels: torch.Tensor) -> np.ndarray:
    """Device pixels as a contiguous host array (the one device-to-host copy of a batch)."""
    return np.ascontiguousarray(pixels.cpu().numpy())
