"""The worker's own loop on tiny SDXL and SD 2.x (v-prediction) pipelines: the images of a
diffusers pipeline call, seeds that reproduce alone or batched, per-image micro-conditioning."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler

from devtools.tiny_families import build_tiny_sd2_pipeline, build_tiny_sdxl_pipeline
from devtools.tiny_pipeline import TOKENIZER_MAX_LENGTH
from olss_core.protocol import JobSpec
from tests.support.torch_threads import single_torch_thread
from workers.inference import InferenceEngine
from workers.model_family import ModelFamily, pipeline_family

PIXEL_TOLERANCE = 2  # of 255: CPU convolutions may differ in the last bits with batch size
BUILDERS = {
    "sdxl": lambda tmp: build_tiny_sdxl_pipeline(tmp),
    "sd2-v": lambda tmp: build_tiny_sd2_pipeline(tmp),
    "sd2-v-zero-snr": lambda tmp: build_tiny_sd2_pipeline(tmp, zero_terminal_snr=True),
}


def spec(prompt: str, seed: int, **changes: object) -> JobSpec:
    base = {"model": "tiny", "prompt": prompt, "width": 32, "height": 32, "steps": 3,
            "guidance_scale": 5.0, "seed": seed, "scheduler": "euler"}
    return JobSpec(**{**base, **changes})


@pytest.fixture(params=list(BUILDERS))
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[InferenceEngine]:
    with single_torch_thread():
        pipe = BUILDERS[request.param](tmp_path)
        pipe.set_progress_bar_config(disable=True)
        yield InferenceEngine(pipe, torch.device("cpu"))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def scheduler_for(pipe) -> EulerDiscreteScheduler | DDIMScheduler:
    return type(pipe.scheduler).from_config(pipe.scheduler.config)


@pytest.mark.parametrize("negative", [None, "blurry"])
def test_the_engine_makes_the_images_of_the_family_pipeline(
    engine: InferenceEngine, negative: str | None
) -> None:
    """SDXL: two encoders, pooled embeds and time ids; an absent negative prompt is zeros
    (``force_zeros_for_empty_prompt``). SD 2.x: the scheduler reads ``v``."""
    pipe = engine.pipe
    job = spec("a lighthouse at dusk", 7, num_images=2, negative_prompt=negative)
    ours = engine.generate([job], scheduler_for(pipe)).images[0]
    pipe.scheduler = scheduler_for(pipe)
    theirs = pipe(
        [job.prompt] * 2, negative_prompt=None if negative is None else [negative] * 2,
        height=32, width=32, num_inference_steps=3, guidance_scale=5.0,
        generator=[torch.Generator().manual_seed(seed) for seed in job.seeds],
    ).images
    for mine, reference in zip(ours, theirs, strict=True):
        assert np.abs(pixels(mine) - pixels(reference)).max() <= 1


def test_a_seed_gives_the_same_image_alone_or_in_a_batch(engine: InferenceEngine) -> None:
    scheduler = scheduler_for(engine.pipe)
    alone = engine.generate([spec("a red fox", 42)], scheduler).images[0][0]
    batch = engine.generate(
        [spec("a lighthouse", 7, num_images=2, negative_prompt="blurry"),
         spec("a red fox", 42),
         spec("a bowl of ramen", 40, num_images=2)],
        scheduler,
    )
    assert [len(images) for images in batch.images] == [2, 1, 2]
    assert np.abs(pixels(batch.images[1][0]) - pixels(alone)).max() <= PIXEL_TOLERANCE
    assert np.abs(pixels(batch.images[0][0]) - pixels(alone)).max() > PIXEL_TOLERANCE


def test_sdxl_conditions_each_image_on_its_own_size(tmp_path: Path) -> None:
    """time_ids are per UNet row: (original size, crop, target size) of that row's image."""
    pipe = build_tiny_sdxl_pipeline(tmp_path)
    engine = InferenceEngine(pipe, torch.device("cpu"))
    assert pipeline_family(pipe).family is ModelFamily.SDXL
    with torch.inference_mode():
        cond = engine._encode(["a", "b"], ["", "x"], [(32, 32), (48, 64)], True, 3)
    assert cond.hidden.shape == (6, TOKENIZER_MAX_LENGTH, 64) and cond.text_embeds.shape == (6, 32)
    assert cond.time_ids.tolist() == [[32, 32, 0, 0, 32, 32], [48, 64, 0, 0, 48, 64],
                                      [48, 64, 0, 0, 48, 64]] * 2
    # the empty negative (row 0) is zeros, the given one (row 1) is encoded
    assert not cond.hidden[0].any() and not cond.text_embeds[0].any()
    assert cond.hidden[1].any() and cond.text_embeds[1].any()
