"""The embedded ``olss-digits`` model: package data, offline loading, and digits it really draws.

A classifier trained on the real 8x8 digits (``bench.digits_eval``) must read the generated
images as the requested digit: OLSS at 5 steps and DDIM at 50 steps, over fixed prompts/seeds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bench.digits_eval import (
    accuracy,
    eval_cases,
    generation_accuracy,
    images_to_digits8x8,
    load_digits_arrays,
)
from tests.support.torch_threads import single_torch_thread
from workers.embedded_model import EMBEDDED_MODELS, model_defaults, resolve_model

MODEL = "olss-digits"
NUM_CASES = 40
OLSS_MIN_ACCURACY = 0.85
DDIM50_MIN_ACCURACY = 0.90
MAX_WEIGHT_BYTES = 8 * 1024 * 1024


@pytest.fixture(scope="module")
def digits_pipe():
    """The embedded pipeline, loaded offline from package data with ``from_pretrained``."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(resolve_model(MODEL))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_resolve_model_maps_the_embedded_name_and_passes_anything_else_through() -> None:
    folder = Path(resolve_model(MODEL))
    assert folder == Path(EMBEDDED_MODELS[MODEL])
    assert (folder / "model_index.json").is_file()
    assert folder.parent.parent.name == "workers"
    assert resolve_model("runwayml/stable-diffusion-v1-5") == "runwayml/stable-diffusion-v1-5"
    assert resolve_model("/models/tiny-sd") == "/models/tiny-sd"


def test_model_folder_is_small_safetensors_with_its_training_record() -> None:
    folder = Path(resolve_model(MODEL))
    weights = sorted(folder.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"text_encoder", "unet", "vae"}
    assert not list(folder.rglob("*.bin")) and not list(folder.rglob("*.ckpt"))
    assert sum(w.stat().st_size for w in weights) < MAX_WEIGHT_BYTES
    record = json.loads((folder / "training.json").read_text())
    assert record["command"].startswith("python -m bench.train_digits")
    assert record["seed"] == 0
    assert model_defaults(MODEL).guidance_scale == record["default_guidance_scale"]


def test_pipeline_is_stable_diffusion_with_sd15_ddim_config(digits_pipe) -> None:
    from diffusers import DDIMScheduler

    folder = Path(resolve_model(MODEL))
    index = json.loads((folder / "model_index.json").read_text())
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    assert index["safety_checker"] == [None, None]
    scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    assert scheduler.config.beta_schedule == "scaled_linear"
    assert scheduler.config.num_train_timesteps == 1000
    assert (scheduler.config.clip_sample, scheduler.config.set_alpha_to_one) == (False, False)
    assert scheduler.config.steps_offset == 1
    assert digits_pipe.safety_checker is None
    assert digits_pipe.unet.config.sample_size * digits_pipe.vae_scale_factor == 16
    assert digits_pipe.tokenizer.tokenize("the number three") == [
        "the</w>",
        "number</w>",
        "three</w>",
    ]


def test_conversion_lets_the_classifier_read_upsampled_real_digits() -> None:
    import torch

    images, labels = load_digits_arrays()
    x = torch.from_numpy(images[:, None] / 16.0)
    up = torch.nn.functional.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False)
    small = images_to_digits8x8(up.repeat(1, 3, 1, 1))
    # Up- then down-sampling blurs by (1/8, 3/4, 1/8) per axis: close, not exact.
    assert np.abs(small - images).mean() < 1.5
    assert accuracy(up.repeat(1, 3, 1, 1), labels) > 0.97


def test_olss_5_steps_draws_the_requested_digit(digits_pipe) -> None:
    from schedules import OLSSScheduler, ScheduleRegistry

    guidance = model_defaults(MODEL).guidance_scale
    schedule = ScheduleRegistry.default().get(MODEL, 5, guidance)
    digits_pipe.scheduler = OLSSScheduler.from_schedule(schedule)
    with single_torch_thread():
        acc = generation_accuracy(digits_pipe, eval_cases(NUM_CASES), 5, guidance)
    assert acc >= OLSS_MIN_ACCURACY


def test_ddim_50_steps_draws_the_requested_digit(digits_pipe) -> None:
    from diffusers import DDIMScheduler

    guidance = model_defaults(MODEL).guidance_scale
    folder = resolve_model(MODEL)
    digits_pipe.scheduler = DDIMScheduler.from_pretrained(folder, subfolder="scheduler")
    with single_torch_thread():
        acc = generation_accuracy(digits_pipe, eval_cases(NUM_CASES), 50, guidance)
    assert acc >= DDIM50_MIN_ACCURACY
