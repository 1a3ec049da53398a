"""The graphed engine on the tiny pipeline. On a CPU nothing is captured and the graph code runs
its segments on the static buffers each call: the same images as the eager engine, to the byte,
padded batches and chunked decodes included; the step hook after each graph segment; no new
graphs after warm-up; only OLSS loops graphed. On CUDA the captured graphs replay the same
images (skipped without a GPU)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from olss_core.protocol import JobSpec
from schedules import OLSSScheduler
from tests.support.schedules import build_schedule
from tests.support.torch_threads import single_torch_thread
from workers.batch_buckets import BatchBuckets
from workers.engine import BatchInterrupted
from workers.fast_path import FastPathOptions, apply_fast_path
from workers.inference import InferenceEngine
from workers.served_graphs import GraphMode

CPU = torch.device("cpu")
BUCKETS = BatchBuckets((1, 2, 4))


def spec(num_images: int = 3, **changes: object) -> JobSpec:
    base = {
        "model": "tiny-sd", "prompt": "a tiny robot", "negative_prompt": "blurry", "width": 32,
        "height": 32, "steps": 4, "guidance_scale": 7.5, "seed": 11, "num_images": num_images,
        "scheduler": "olss",
    }
    return JobSpec(**{**base, **changes})


def image_bytes(output) -> list[bytes]:
    return [image.tobytes() for images in output.images for image in images]


@pytest.fixture()
def pipe(tiny_pipeline: StableDiffusionPipeline) -> Iterator[StableDiffusionPipeline]:
    with single_torch_thread():
        yield tiny_pipeline


@pytest.fixture()
def olss() -> OLSSScheduler:
    return OLSSScheduler.from_schedule(build_schedule(4))


@pytest.mark.parametrize("mode", [GraphMode.STEP, GraphMode.LOOP])
def test_the_graph_code_makes_the_eager_images_to_the_byte(
    pipe: StableDiffusionPipeline, olss: OLSSScheduler, mode: GraphMode
) -> None:
    eager = InferenceEngine(pipe, CPU)
    graphed = InferenceEngine(pipe, CPU, mode, BUCKETS)
    for count in (3, 1, 3):  # 3 runs padded to 4 and decodes as 2 + 1; then again, reused
        expected = image_bytes(eager.generate([spec(count)], olss))
        assert image_bytes(graphed.generate([spec(count)], olss)) == expected
    kinds = sorted(key[0] for key in graphed.graphs.keys)
    assert kinds == ["decode", "decode", "encode", "encode", "loop", "loop"]


def test_step_graphs_report_every_step_and_a_loop_graph_once(
    pipe: StableDiffusionPipeline, olss: OLSSScheduler
) -> None:
    for mode, expected in ((GraphMode.STEP, [(1, 4), (2, 4), (3, 4), (4, 4)]),
                           (GraphMode.LOOP, [(4, 4)])):
        seen: list[tuple[int, int]] = []

        def record(step: int, total: int, latents: object = None,
                   seen: list[tuple[int, int]] = seen) -> bool:
            seen.append((step, total))
            return True

        InferenceEngine(pipe, CPU, mode, BUCKETS).generate([spec(2)], olss, record)
        assert seen == expected, mode


@pytest.mark.parametrize("mode", [GraphMode.STEP, GraphMode.LOOP])
def test_the_hook_can_stop_a_graphed_batch(
    pipe: StableDiffusionPipeline, olss: OLSSScheduler, mode: GraphMode
) -> None:
    engine = InferenceEngine(pipe, CPU, mode, BUCKETS)
    with pytest.raises(BatchInterrupted):
        engine.generate([spec(1)], olss, lambda step, total, latents=None: False)


def test_after_warm_up_an_unwarmed_shape_runs_eagerly_and_the_same(
    pipe: StableDiffusionPipeline, olss: OLSSScheduler
) -> None:
    engine = InferenceEngine(pipe, CPU, GraphMode.STEP, BUCKETS)
    engine.generate([spec(1)], olss)
    engine.finish_warm_up()
    warmed = list(engine.graphs.keys)
    wide = spec(2, width=48)
    assert image_bytes(engine.generate([wide], olss)) == image_bytes(
        InferenceEngine(pipe, CPU).generate([wide], olss)
    )
    assert engine.graphs.keys == warmed


def test_only_olss_loops_are_graphed(pipe: StableDiffusionPipeline) -> None:
    ddim = DDIMScheduler.from_config(pipe.scheduler.config)
    engine = InferenceEngine(pipe, CPU, GraphMode.STEP, BUCKETS)
    job = spec(2, scheduler="ddim")
    assert image_bytes(engine.generate([job], ddim)) == image_bytes(
        InferenceEngine(pipe, CPU).generate([job], ddim)
    )
    assert sorted(key[0] for key in engine.graphs.keys) == ["decode", "encode"]


def test_compiled_models_in_the_graph_code_serve_the_same_images(
    pipe: StableDiffusionPipeline, olss: OLSSScheduler
) -> None:
    """``torch.compile`` (the ``eager`` backend: dynamo traces, no code generation) inside the
    graphed loop, as a CUDA worker with both switches on runs it."""
    expected = image_bytes(InferenceEngine(pipe, CPU).generate([spec(2)], olss))
    options = FastPathOptions(compile=True, compile_backend="eager", cuda_graphs=GraphMode.STEP)
    compiled = apply_fast_path(pipe, CPU, options)
    engine = InferenceEngine(compiled, CPU, options.cuda_graphs, BUCKETS)
    assert compiled.unet._compiled_call_impl is not None
    assert image_bytes(engine.generate([spec(2)], olss)) == expected


def cuda_devices() -> list:
    """``cuda`` and, on a host with two or more, the last CUDA device (a capture there must
    record on that device's stream, not on ``cuda:0``'s)."""
    need_one = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
    need_two = pytest.mark.skipif(
        torch.cuda.device_count() < 2, reason="needs two CUDA devices"
    )
    last = f"cuda:{max(torch.cuda.device_count() - 1, 1)}"
    return [pytest.param("cuda", marks=need_one), pytest.param(last, marks=need_two, id="last")]


@pytest.mark.parametrize("device", cuda_devices())
@pytest.mark.parametrize("mode", [GraphMode.STEP, GraphMode.LOOP])
def test_captured_cuda_graphs_replay_the_eager_images(
    tiny_pipeline: StableDiffusionPipeline, mode: GraphMode, device: str
) -> None:
    cuda = torch.device(device)
    pipe = tiny_pipeline.to(cuda)
    olss = OLSSScheduler.from_schedule(build_schedule(4))
    eager = InferenceEngine(pipe, cuda)
    graphed = InferenceEngine(pipe, cuda, mode, BUCKETS)
    for count, seed in ((3, 11), (1, 12), (3, 13)):  # new seeds: a replay must read new inputs
        expected = eager.generate([spec(count, seed=seed)], olss)
        replayed = graphed.generate([spec(count, seed=seed)], olss)
        for a, b in zip(expected.images[0], replayed.images[0], strict=True):
            assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    assert any(key[0] == "loop" for key in graphed.graphs.keys)
