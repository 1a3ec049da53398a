"""The family adapter: detection from configs, per-family defaults, the fast path's SDXL VAE, the
prediction-type check at load, and an SDXL loop through the graph machinery (CPU fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from devtools.tiny_families import build_tiny_sdxl_pipeline, save_tiny_sd2_pipeline
from olss_core.protocol import JobSpec
from olss_core.settings import ConfigError
from schedules import OLSSScheduler
from tests.support.schedules import build_schedule
from tests.support.torch_threads import single_torch_thread
from workers.batch_buckets import BatchBuckets
from workers.embedded_model import model_defaults
from workers.fast_path import FastPathOptions, apply_fast_path, read_pipeline
from workers.inference import InferenceEngine
from workers.model_family import (
    FAMILIES,
    ModelFamily,
    check_prediction_types,
    family_of,
    pipeline_family,
)
from workers.served_graphs import GraphMode


def test_the_family_is_read_from_the_unet_config() -> None:
    assert family_of({"addition_embed_type": "text_time"}).family is ModelFamily.SDXL
    assert family_of({"use_linear_projection": True}).family is ModelFamily.SD2
    assert family_of({"cross_attention_dim": 768}).family is ModelFamily.SD1
    assert [FAMILIES[f].native_size for f in ModelFamily] == [512, 768, 1024]


def test_a_folder_states_its_family_defaults_before_loading(tmp_path: Path,
                                                            tiny_pipeline_dir: Path) -> None:
    sd2 = save_tiny_sd2_pipeline(tmp_path / "sd2")
    assert (model_defaults(str(sd2)).guidance_scale, model_defaults(str(sd2)).num_inference_steps
            ) == (7.5, None)
    # SD 1.x and unknown models leave the defaults to the settings
    assert model_defaults(str(tiny_pipeline_dir)).guidance_scale is None
    assert model_defaults(str(tmp_path / "absent")).guidance_scale is None
    assert pipeline_family(read_pipeline(str(sd2))).family is ModelFamily.SD2


def test_a_schedule_of_another_prediction_type_stops_start_up() -> None:
    epsilon = [build_schedule(4)]
    assert check_prediction_types(epsilon, {"prediction_type": "epsilon"}) == epsilon
    with pytest.raises(ConfigError, match=r"prediction_type='epsilon'.*v_prediction"):
        check_prediction_types(epsilon, {"prediction_type": "v_prediction"})


def test_fp16_keeps_an_upcasting_sdxl_vae_in_fp32(tmp_path: Path) -> None:
    pipe = apply_fast_path(build_tiny_sdxl_pipeline(tmp_path), torch.device("cpu"),
                           FastPathOptions(fp16=True))
    assert pipe.unet.dtype == torch.float16 and pipe.text_encoder_2.dtype == torch.float16
    assert pipe.vae.dtype == torch.float32


def test_an_sdxl_olss_loop_runs_the_same_through_the_graph_path(tmp_path: Path) -> None:
    """The conditioning (hidden, pooled, time ids) is a static input of the captured loop."""
    pipe = build_tiny_sdxl_pipeline(tmp_path)
    job = JobSpec(model="tiny", prompt="a fox", width=32, height=32, steps=4,
                  guidance_scale=5.0, seed=3, num_images=3, scheduler="olss")
    olss = OLSSScheduler.from_schedule(build_schedule(4))
    with single_torch_thread():
        eager = InferenceEngine(pipe, torch.device("cpu")).generate([job], olss).images[0]
        graphed = InferenceEngine(pipe, torch.device("cpu"), GraphMode.STEP,
                                  BatchBuckets.up_to(4, None)).generate([job], olss).images[0]
    for a, b in zip(eager, graphed, strict=True):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 2
