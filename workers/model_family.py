"""Which Stable Diffusion family a model is, read from its configs, and what that family needs.

* SD 1.x: one CLIP ViT-L/14 text encoder (last hidden state), a UNet with convolutional
  attention projections, 512x512.
* SD 2.x: one OpenCLIP ViT-H/14 text encoder, a UNet with linear attention projections
  (``use_linear_projection``), 768x768 for the ``v``-predicting models (Salimans & Ho, 2022).
* SDXL: two text encoders whose penultimate hidden states are concatenated, the second's pooled
  and projected output, and a UNet with ``addition_embed_type="text_time"`` that takes them with
  the micro-conditioning ``time_ids`` = (original size, crop top-left, target size) as
  ``added_cond_kwargs`` (Podell et al., 2023, "SDXL", Sec. 2.2), 1024x1024.

What the network predicts (``epsilon`` or ``v``) is not a family property: it is the scheduler
config's ``prediction_type``. The family is detected from the UNet config alone, so a worker can
state its defaults before it loads the weights (:func:`read_unet_config`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from olss_core.settings import ConfigError
from schedules import Schedule

UNET_CONFIG = "unet/config.json"
"""Where a diffusers pipeline folder keeps its UNet's config."""


class ModelFamily(StrEnum):
    SD1 = "sd1"
    SD2 = "sd2"
    SDXL = "sdxl"


@dataclass(frozen=True)
class FamilySpec:
    """What a family is served with.

    Args:
        native_size: the side its base models were trained at (a loaded model's own size comes
            from its configs: ``unet.sample_size * vae_scale_factor``).
        default_guidance_scale: the guidance a request without one gets (the family's model
            card value).
        default_steps: steps for the diffusers samplers without a request's; ``None`` leaves it
            to ``OLSS_DEFAULT_SAMPLER_STEPS``.
        added_conditioning: whether the UNet takes ``added_cond_kwargs`` (pooled text embeds and
            micro-conditioning time ids).
    """

    family: ModelFamily
    native_size: int
    default_guidance_scale: float
    default_steps: int | None
    added_conditioning: bool


FAMILIES: dict[ModelFamily, FamilySpec] = {
    ModelFamily.SD1: FamilySpec(ModelFamily.SD1, 512, 7.5, None, added_conditioning=False),
    ModelFamily.SD2: FamilySpec(ModelFamily.SD2, 768, 7.5, None, added_conditioning=False),
    ModelFamily.SDXL: FamilySpec(ModelFamily.SDXL, 1024, 5.0, 30, added_conditioning=True),
}


def family_of(unet_config: Mapping[str, Any]) -> FamilySpec:
    """The family of a UNet config: ``text_time`` added embedding is SDXL, linear attention
    projections SD 2.x, anything else SD 1.x."""
    if unet_config.get("addition_embed_type") == "text_time":
        return FAMILIES[ModelFamily.SDXL]
    if unet_config.get("use_linear_projection"):
        return FAMILIES[ModelFamily.SD2]
    return FAMILIES[ModelFamily.SD1]


def pipeline_family(pipe: Any) -> FamilySpec:
    """The family of a loaded diffusers pipeline."""
    return family_of(pipe.unet.config)


def read_unet_config(source: str) -> dict[str, Any] | None:
    """The UNet config of a local diffusers folder, or of a hub id already in the local Hugging
    Face cache (no network); ``None`` when neither has it."""
    path = Path(source) / UNET_CONFIG
    if not path.is_file():
        from huggingface_hub import try_to_load_from_cache

        try:
            cached = try_to_load_from_cache(source, UNET_CONFIG)
        except ValueError:  # not a hub id (a folder that does not exist)
            return None
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    return json.loads(path.read_text(encoding="utf-8"))


def check_prediction_types(
    schedules: list[Schedule], scheduler_config: Mapping[str, Any]
) -> list[Schedule]:
    """``schedules``, after stopping start-up (``ConfigError``) when one was fitted on a model
    that predicts something else than this one (``scheduler_config["prediction_type"]``,
    diffusers' default ``epsilon``): its coefficients would combine the wrong outputs."""
    predicts = scheduler_config.get("prediction_type") or "epsilon"
    for schedule in schedules:
        try:
            schedule.check_prediction_type(predicts)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return schedules
