"""bench/gpu_latency.py cannot rot: its --tiny CPU run writes every field, and its staged
generation is the same computation as a StableDiffusionPipeline call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_latency import TINY, Sampler, build_pipeline, fit_bench_schedules, generate
from bench.gpu_latency import make_scheduler as bench_scheduler
from workers.fast_path import FastPathOptions, apply_fast_path
from workers.stage_timer import StageTimer

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"encode", "denoise", "decode", "total", "wall"}
# The documented --tiny run covers all five samplers at batch 1, 4 and 8; the test keeps one
# sampler of each kind and two batch sizes so it stays under a minute on a shared 2-core box.
SAMPLERS = ["olss-5", "dpmsolver++-4", "ddim-6"]
BATCHES = [1, 2]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "gpu_latency.json"
    command = [
        sys.executable,
        "-m",
        "bench.gpu_latency",
        "--tiny",
        "--out",
        str(out),
        "--samplers",
        *SAMPLERS,
        "--batches",
        *map(str, BATCHES),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


def test_tiny_run_times_every_stage_of_every_cell(tiny_run: tuple[dict, str]) -> None:
    result, _ = tiny_run
    assert set(result) == {
        "meta",
        "cells",
        "ablations",
        "compile_first_run_s",
        "sync_check",
        "targets",
        "errors",
    }
    meta = result["meta"]
    assert meta["tiny"] is True and meta["device"] == "cpu"
    assert "not latency claims" in meta["weights_note"]
    assert set(meta["parameters"]) == {"unet", "vae", "text_encoder"}
    grid = {(c["sampler"], c["batch"]) for c in result["cells"] if c["config"] == "default"}
    assert grid == {(s, b) for s in SAMPLERS for b in BATCHES}
    for cell in result["cells"]:
        assert set(cell["stages"]) == STAGES
        for stat in cell["stages"].values():
            assert 0 < stat["median_ms"] <= stat["p90_ms"]
        assert cell["stages"]["total"]["median_ms"] >= cell["stages"]["denoise"]["median_ms"]
        assert cell["images_per_s"] > 0 and cell["repeats"] >= 2 and cell["warmup_runs"] >= 1
        assert cell["peak_memory_mib"] is None  # CPU: no CUDA allocator to ask
        assert cell["finite_output"] is True
        assert cell["options"]["fp16"] is False and cell["options"]["compile"] is False
    assert result["targets"]["judged"] is False
    assert result["compile_first_run_s"] == {} and result["errors"] == []


def test_tiny_run_switches_each_optimisation_it_can_on_a_cpu(tiny_run: tuple[dict, str]) -> None:
    result, _ = tiny_run
    rows = {row["optimisation"]: row for row in result["ablations"]}
    assert rows["sdpa"]["measured"] and rows["channels_last"]["measured"]
    assert rows["sdpa"]["off_config"]["sdpa"] is False
    assert rows["channels_last"]["on_config"]["channels_last"] is True
    assert not rows["fp16"]["measured"] and not rows["compile"]["measured"]  # GPU only
    assert rows["all (default vs all off)"]["speedup"] > 0


def test_sync_check_finds_none_in_olss_and_the_known_ones_in_peers(
    tiny_run: tuple[dict, str],
) -> None:
    checks = {s["sampler"]: s for s in tiny_run[0]["sync_check"]}
    olss = checks["olss-5"]
    assert olss["steady_per_step"] == [0] * 5 and olss["steady_total"] == 0
    assert sum(olss["first_run_per_step"][1:]) == 0
    # DPM-Solver++ looks its step index up with nonzero() + item() at step 0; DDIM indexes a
    # host table with the device timestep every step. Seeing them shows the check can fail.
    assert checks["dpmsolver++-4"]["steady_per_step"][0] >= 1
    assert all(n >= 1 for n in checks["ddim-6"]["steady_per_step"])


def test_the_table_is_printed_last(tiny_run: tuple[dict, str]) -> None:
    _, stdout = tiny_run
    lines = stdout.strip().splitlines()
    assert lines[0].startswith("# tiny-sd-architecture-random-weights")
    assert any(line.startswith("| default | olss-5 | 1 |") for line in lines)
    sync_header = next(i for i, line in enumerate(lines) if "host syncs" in line)
    assert {line.split(" | ")[0] for line in lines[sync_header + 2 :]} == {
        f"| {name}" for name in SAMPLERS
    }


def test_staged_generation_equals_a_pipeline_call(tmp_path: Path) -> None:
    pipe = build_pipeline(TINY, torch.device("cpu"), tmp_path)
    pipe = apply_fast_path(
        pipe, torch.device("cpu"), FastPathOptions.for_device(torch.device("cpu"))
    )
    schedules = fit_bench_schedules([5], TINY)
    for sampler in (Sampler("olss", 5), Sampler("dpmsolver++", 3)):
        pipe.scheduler = bench_scheduler(sampler, schedules)
        prompts = ["a cat"]
        staged = generate(
            pipe, prompts, sampler.steps, 7.5, torch.Generator().manual_seed(3), StageTimer("cpu")
        )
        called = pipe(
            prompts,
            num_inference_steps=sampler.steps,
            guidance_scale=7.5,
            generator=torch.Generator().manual_seed(3),
            output_type="pt",
        ).images
        torch.testing.assert_close(staged, called, atol=1e-5, rtol=1e-5)
