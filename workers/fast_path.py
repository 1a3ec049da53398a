"""Device placement and the CUDA fast path for a diffusers Stable Diffusion pipeline.

Each optimisation is a separate switch so benchmarks can measure each one's effect:
fp16 weights/activations, PyTorch SDPA attention, channels-last memory format and
``torch.compile`` of the UNet and VAE decoder. On CPU everything defaults to off (fp32).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from diffusers import StableDiffusionPipeline
from diffusers.models.attention_processor import AttnProcessor2_0


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``cpu``, ``cuda``, ``cuda:1``), else CUDA when present, else CPU."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"OLSS_DEVICE={requested!r} but no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class FastPathOptions:
    """Which optimisations to apply. ``for_device`` gives the defaults for a device."""

    fp16: bool = False
    sdpa: bool = True
    channels_last: bool = False
    compile: bool = False

    @classmethod
    def for_device(cls, device: torch.device, **overrides: bool) -> FastPathOptions:
        on_cuda = device.type == "cuda"
        defaults = cls(fp16=on_cuda, sdpa=True, channels_last=on_cuda, compile=False)
        return replace(defaults, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.float32


def apply_fast_path(
    pipe: StableDiffusionPipeline, device: torch.device, options: FastPathOptions
) -> StableDiffusionPipeline:
    """Move ``pipe`` to ``device`` in the options' dtype and apply the enabled optimisations."""
    pipe = pipe.to(device)
    if pipe.unet.dtype != options.dtype:
        pipe = pipe.to(dtype=options.dtype)
    if options.sdpa:
        pipe.unet.set_attn_processor(AttnProcessor2_0())
        pipe.vae.set_attn_processor(AttnProcessor2_0())
    if options.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if options.compile:
        pipe.unet = torch.compile(pipe.unet, mode="max-autotune", fullgraph=True)
        pipe.vae.decode = torch.compile(pipe.vae.decode, mode="max-autotune", fullgraph=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(
    model: str, device: torch.device, options: FastPathOptions
) -> StableDiffusionPipeline:
    """Load a Hugging Face model id or local diffusers folder and apply the fast path.

    fp16 weights are loaded directly in half precision (``dtype``), so a CUDA worker never
    holds an fp32 copy.
    """
    pipe = StableDiffusionPipeline.from_pretrained(
        model, dtype=options.dtype, safety_checker=None, requires_safety_checker=False
    )
    return apply_fast_path(pipe, device, options)
