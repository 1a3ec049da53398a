"""The tiny SD 2.x and SDXL pipelines load through diffusers' auto pipeline, offline, and run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import AutoPipelineForText2Image

from devtools.tiny_families import save_tiny_sd2_pipeline, save_tiny_sdxl_pipeline


@pytest.mark.parametrize(
    ("save", "pipeline_class", "prediction_type"),
    [
        (save_tiny_sd2_pipeline, "StableDiffusionPipeline", "v_prediction"),
        (save_tiny_sdxl_pipeline, "StableDiffusionXLPipeline", "epsilon"),
    ],
)
def test_a_tiny_family_pipeline_loads_and_generates(
    tmp_path: Path, save, pipeline_class: str, prediction_type: str
) -> None:
    pipe = AutoPipelineForText2Image.from_pretrained(save(tmp_path / "model"))
    pipe.set_progress_bar_config(disable=True)
    assert type(pipe).__name__ == pipeline_class
    assert pipe.scheduler.config.prediction_type == prediction_type
    images = pipe(["a cat", "a dog"], num_inference_steps=2, guidance_scale=5.0,
                  output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (2, 32, 32, 3)


def test_the_zero_terminal_snr_variant_ends_at_zero_signal(tmp_path: Path) -> None:
    pipe = AutoPipelineForText2Image.from_pretrained(
        save_tiny_sd2_pipeline(tmp_path / "model", zero_terminal_snr=True)
    )
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6
