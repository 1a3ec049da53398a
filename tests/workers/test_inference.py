"""Batched inference on the tiny pipeline: the same images as a diffusers pipeline call, seeds
reproduce alone or batched, cancel stops it."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, SchedulerMixin

from olss_core.protocol import JobSpec
from schedules import OLSSScheduler
from tests.support.schedules import build_schedule
from tests.support.torch_threads import single_torch_thread
from workers.engine import BatchInterrupted
from workers.image_decoding import decode_to_pixels, to_host
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

    def stop_after_two(step: int, total: int, latents: object = None) -> bool:
        seen.append((step, total))
        return step < 2

    with pytest.raises(BatchInterrupted):
        engine.generate([spec("x", 1, scheduler="ddim", steps=6)], scheduler, stop_after_two)
    assert seen == [(1, 6), (2, 6)]


SCHEDULERS = {
    "olss": lambda config: OLSSScheduler.from_schedule(build_schedule(4)),
    "dpmsolver++": DPMSolverMultistepScheduler.from_config,
    "ddim": DDIMScheduler.from_config,
}


@pytest.mark.parametrize("name", SCHEDULERS)
def test_the_engine_makes_the_images_of_a_pipeline_call(engine: InferenceEngine, name: str) -> None:
    """The worker's own stages (one text-encoder call for both guidance halves, its loop, the
    decoder to uint8 on the device) against ``StableDiffusionPipeline.__call__``."""
    make = SCHEDULERS[name]
    config = engine.pipe.scheduler.config
    served: SchedulerMixin = make(config)
    job = spec("a lighthouse at dusk", 7, num_images=2, negative_prompt="blurry", scheduler=name)
    ours = engine.generate([job], served).images[0]
    pipe = engine.pipe
    pipe.scheduler = make(config)
    theirs = pipe(
        [job.prompt] * 2, negative_prompt=[job.negative_prompt] * 2, height=32, width=32,
        num_inference_steps=4, guidance_scale=7.5,
        generator=[torch.Generator().manual_seed(seed) for seed in job.seeds],
    ).images
    for mine, reference in zip(ours, theirs, strict=True):
        assert np.abs(pixels(mine) - pixels(reference)).max() <= 1


def test_pixels_are_the_image_processors_to_the_bit(engine: InferenceEngine) -> None:
    pipe = engine.pipe
    latents = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        ours = to_host(decode_to_pixels(pipe.vae, latents))
        decoded = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
        theirs = pipe.image_processor.postprocess(decoded, output_type="pil")
    assert ours.dtype == np.uint8 and ours.shape == (3, 32, 32, 3)
    for mine, reference in zip(ours, theirs, strict=True):
        assert np.array_equal(mine, np.asarray(reference))
