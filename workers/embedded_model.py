"""Models that ship inside the package, so a fresh machine with no network serves something real.

``olss-digits`` is a small Stable Diffusion pipeline (CLIP text encoder, ``AutoencoderKL``,
``UNet2DConditionModel``, DDIM scheduler) trained on scikit-learn's handwritten digits by
``bench/train_digits.py``; it draws 16x16 digits from prompts such as "the number 3".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from workers.model_family import ModelFamily, family_of, read_unet_config

MODELS_DIR = Path(__file__).resolve().parent / "models"

#: Embedded model name -> its diffusers folder inside the package.
EMBEDDED_MODELS: dict[str, str] = {"olss-digits": str(MODELS_DIR / "olss-digits")}

#: What a worker serves when ``OLSS_MODEL`` is unset: the trained ``olss-digits``, whose OLSS
#: schedules ship in the built-in registry.
DEFAULT_MODEL = "olss-digits"

#: File in an embedded model's folder with its serving defaults.
DEFAULTS_FILE = "olss_defaults.json"


@dataclass(frozen=True)
class ModelDefaults:
    """Serving defaults a model folder may declare in ``olss_defaults.json``."""

    guidance_scale: float | None = None
    num_inference_steps: int | None = None


def resolve_model(name_or_path: str | None = None) -> str:
    """What ``from_pretrained`` loads for a configured model: an embedded model's folder for its
    name, anything else (hub id, local folder) unchanged; ``None`` is :data:`DEFAULT_MODEL`."""
    name = name_or_path or DEFAULT_MODEL
    return EMBEDDED_MODELS.get(name, name)


def model_defaults(name_or_path: str) -> ModelDefaults:
    """Defaults from the resolved folder's ``olss_defaults.json``, else its family's
    (:mod:`workers.model_family`: SDXL's guidance 5 and 30 steps); SD 1.x and 2.x leave them to
    the settings, as does a model whose config is not on this machine yet."""
    source = resolve_model(name_or_path)
    path = Path(source) / DEFAULTS_FILE
    if path.is_file():
        data = json.loads(path.read_text(encoding="utf-8"))
        return ModelDefaults(
            guidance_scale=data.get("guidance_scale"),
            num_inference_steps=data.get("num_inference_steps"),
        )
    unet_config = read_unet_config(source)
    if unet_config is None:
        return ModelDefaults()
    family = family_of(unet_config)
    if family.family is ModelFamily.SD1:
        return ModelDefaults()
    return ModelDefaults(family.default_guidance_scale, family.default_steps)
