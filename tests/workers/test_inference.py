"""Batched inference on the tiny pipeline: seeds reproduce alone or batched; cancel stops it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from olss_core.protocol import JobSpec
from tests.support.torch_threads import single_torch_thread
from workers.engine import BatchInterrupted
from workers.inference import InferenceEngine

PIXEL_TOLERANCE = 2  # of 255: CPU convolutions may differ in the last bits with batch size


def spec(prompt: str, seed: int, **changes: object) -> JobSpec:
    base = {
        "model": "tiny-sd",
        "prompt": prompt,
        "width": 32,
        "height": 32,
        "steps": 4,
        "guidance_scale": 7.5,
        "seed": seed,
        "scheduler": "dpmsolver++",
    }
    return JobSpec(**{**base, **changes})


@pytest.fixture()
def engine(tiny_pipeline) -> Iterator[InferenceEngine]:
    """The engine on CPU with one torch thread: the test machine is shared, and oversubscribed
    OpenMP threads make these runs ten times slower."""
    with single_torch_thread():
        yield InferenceEngine(tiny_pipeline, torch.device("cpu"))


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_a_seed_gives_the_same_image_alone_or_in_a_batch(engine: InferenceEngine) -> None:
    scheduler = DPMSolverMultistepScheduler.from_config(engine.pipe.scheduler.config)
    alone = engine.generate([spec("a red fox", 42)], scheduler).images[0][0]
    batch = engine.generate(
        [
            spec("a lighthouse", 7, num_images=2, negative_prompt="blurry"),
            spec("a red fox", 42),
            spec("a bowl of ramen", 40, num_images=3),
        ],
        scheduler,
    )
    assert [len(images) for images in batch.images] == [2, 1, 3]
    assert np.abs(pixels(batch.images[1][0]) - pixels(alone)).max() <= PIXEL_TOLERANCE
    # num_images=3 from seed 40 makes seeds 40, 41, 42: image 2 is seed 42's image for its prompt
    ramen = engine.generate([spec("a bowl of ramen", 42)], scheduler).images[0][0]
    assert np.abs(pixels(batch.images[2][2]) - pixels(ramen)).max() <= PIXEL_TOLERANCE
    assert np.abs(pixels(batch.images[2][0]) - pixels(ramen)).max() > PIXEL_TOLERANCE


def test_stages_are_timed(engine: InferenceEngine) -> None:
    scheduler = DDIMScheduler.from_config(engine.pipe.scheduler.config)
    output = engine.generate([spec("x", 1, scheduler="ddim", guidance_scale=1.0)], scheduler)
    assert set(output.durations) == {"encode", "denoise", "decode", "total"}
    assert output.durations["total"] >= output.durations["denoise"] > 0


def test_step_hook_sees_every_step_and_can_stop_the_batch(engine: InferenceEngine) -> None:
    scheduler = DDIMScheduler.from_config(engine.pipe.scheduler.config)
    seen: list[tuple[int, int]] = []

    def stop_after_two(step: int, total: int) -> bool:
        seen.append((step, total))
        return step < 2

    with pytest.raises(BatchInterrupted):
        engine.generate([spec("x", 1, scheduler="ddim", steps=6)], scheduler, stop_after_two)
    assert seen == [(1, 6), (2, 6)]
