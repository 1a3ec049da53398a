"""bench/gpu_latency.py cannot rot: its --tiny CPU run times the worker's engine in every
configuration and writes every field, its graph rows make the default's images, its profile
splits the time, and its service mode runs a real gateway and worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.gpu_latency import ablation_configs, main, parse_args, plan_from_args

ROOT = Path(__file__).resolve().parents[2]
STAGES = {"encode", "denoise", "decode", "total", "wall"}
# The documented --tiny run covers all five samplers at batch 1, 4 and 8; the test keeps one
# sampler of each kind and two batch sizes so it stays under a minute on a shared 2-core box.
SAMPLERS = ["olss-5", "dpmsolver++-4", "ddim-6"]
BATCHES = [1, 2]
RESULT_KEYS = {
    "meta", "cells", "ablations", "image_checks", "sync_check", "profiles", "service",
    "compile_warm_up_s", "cold_start", "targets", "skipped", "errors",
}


def run_bench(out: Path, *flags: str, timeout: int = 300) -> tuple[dict, str]:
    command = [sys.executable, "-m", "bench.gpu_latency", "--tiny", "--out", str(out), *flags]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(out.read_text()), done.stdout


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, str]:
    out = tmp_path_factory.mktemp("bench") / "gpu_latency.json"
    return run_bench(out, "--samplers", *SAMPLERS, "--batches", *map(str, BATCHES), "--profile")


def test_tiny_run_times_every_stage_of_every_cell(tiny_run: tuple[dict, str]) -> None:
    result, _ = tiny_run
    assert set(result) == RESULT_KEYS
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
        assert cell["stages"]["wall"]["median_ms"] >= cell["stages"]["denoise"]["median_ms"]
        assert cell["images_per_s"] > 0 and cell["repeats"] >= 2 and cell["warmup_runs"] >= 1
        assert cell["load_s"] > 0 and cell["warm_up_s"] > 0
        assert cell["peak_memory_mib"] is None  # CPU: no CUDA allocator to ask
        assert cell["distinct_images"] is True
        assert cell["options"]["fp16"] is False
    assert result["targets"]["judged"] is False
    assert result["compile_warm_up_s"] > 0
    assert result["errors"] == [] and result["skipped"] == []


def test_each_switch_it_can_flip_on_a_cpu_is_timed_against_the_default(
    tiny_run: tuple[dict, str],
) -> None:
    result, _ = tiny_run
    at_b1 = {c["config"]: c for c in result["cells"] if c["batch"] == 1
             and c["sampler"] == "olss-5"}
    assert set(at_b1) == {"default", "compile on (default)", "all off"} | {
        config.name for config in ablation_configs(__import__("torch").device("cpu"))
    }
    assert at_b1["sdpa off"]["options"]["sdpa"] is False
    assert at_b1["channels_last on"]["options"]["channels_last"] is True
    assert at_b1["compile on (default)"]["options"]["compile"] is True
    assert at_b1["cuda_graphs loop"]["options"]["cuda_graphs"] == "loop"
    assert at_b1["cuda_graphs step"]["graphs"] == 3  # encode, loop, decode at batch 1
    rows = {row["optimisation"].split(" ")[0]: row for row in result["ablations"]}
    assert not rows["fp16"]["measured"]  # GPU only
    for name in ("sdpa", "channels_last", "compile", "cuda_graphs", "all"):
        assert rows[name]["measured"] and rows[name]["speedup"] > 0


def test_the_graph_code_serves_the_defaults_images(tiny_run: tuple[dict, str]) -> None:
    """On a CPU the CUDA-graph path runs its segments on static buffers: the same pixels."""
    checks = {c["config"]: c["max_pixel_diff_vs_default"] for c in tiny_run[0]["image_checks"]}
    assert checks["cuda_graphs step"] == 0 and checks["cuda_graphs loop"] == 0


def test_the_profile_splits_a_request_into_stages_phases_and_op_time(
    tiny_run: tuple[dict, str],
) -> None:
    (profile,) = tiny_run[0]["profiles"]
    assert profile["config"] == "default" and profile["requests"] == 3
    assert profile["device_busy_ms"] is None  # no CUDA activity on a CPU
    assert 0 < profile["op_self_ms"] < profile["wall_ms"]
    assert profile["outside_ops_ms"] == pytest.approx(
        profile["wall_ms"] - profile["op_self_ms"], abs=0.01
    )
    phases = profile["phases"]
    assert [phase["calls"] for phase in phases.values()] == [5, 5, 5]  # once per OLSS step
    assert phases["olss.unet"]["host_ms"] > phases["olss.scheduler"]["host_ms"]
    stages = profile["stages"]
    assert all(stage["calls"] == 1 for stage in stages.values())
    assert sum(stage["host_ms"] for stage in stages.values()) <= profile["wall_ms"]
    assert profile["top_ops"] and profile["top_ops"][0]["op"].startswith("aten::")


def test_sync_check_finds_none_in_olss_and_the_known_ones_in_peers(
    tiny_run: tuple[dict, str],
) -> None:
    checks = {s["sampler"]: s for s in tiny_run[0]["sync_check"]}
    olss = checks["olss-5"]
    assert olss["steady_per_step"] == [0] * 5 and olss["steady_total"] == 0
    assert sum(olss["first_run_per_step"]) == 0  # set_timesteps uploads before the loop
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


def test_service_mode_runs_a_gateway_and_worker_with_overlap_on_and_off(tmp_path: Path) -> None:
    result, _ = run_bench(
        tmp_path / "service.json", "--samplers", "olss-5", "--batches", "1", "--no-ablations",
        "--no-compile", "--service", "--service-clients", "1", "2", "--service-requests", "4",
    )
    levels = result["service"]["levels"]
    assert [(lv["config"], lv["clients"]) for lv in levels] == [
        ("default", 1), ("default", 2), ("overlap off", 1), ("overlap off", 2)
    ]
    assert all(lv["requests"] >= 4 and lv["images_per_s"] > 0 for lv in levels)
    assert all(lv["e2e_p50_ms"] > lv["overhead_p50_ms"] for lv in levels)
    assert len(result["service"]["worker_cold_start_s"]) == 2
    tables = (tmp_path / "service.md").read_text()  # saved beside the JSON, not only printed
    assert tables.startswith("# tiny-sd-architecture-random-weights")
    assert "| default | 2 |" in tables and "| overlap off | 2 |" in tables


def test_the_gpu_check_plan_covers_the_issue_and_needs_a_gpu() -> None:
    plan = plan_from_args(parse_args(["--gpu-check"]))
    assert plan.spec.name.startswith("sd15") and plan.batches == (1, 8)
    assert [s.name for s in plan.samplers] == ["olss-5"]
    assert plan.ablations and plan.compile and plan.profile and plan.service and plan.cold_start
    assert plan.time_budget_s and plan.time_budget_s < 480
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="CUDA"):
            main(["--gpu-check"])


@pytest.mark.skipif(
    torch.cuda.is_available(),
    reason="with CUDA torch the script runs the whole GPU benchmark instead of refusing",
)
def test_the_gpu_check_script_refuses_a_python_without_cuda(tmp_path: Path) -> None:
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(tmp_path)], cwd=ROOT, capture_output=True, text=True,
        timeout=120, env={**os.environ, "PYTHON": sys.executable},
    )
    assert done.returncode == 2, done.stderr
    assert "no CUDA build of torch (set PYTHON)" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_sdxl_mode_serves_two_encoders_and_micro_conditioning(tmp_path: Path) -> None:
    """``--family sdxl`` through the worker's loading and engine: an SDXL UNet called without
    its pooled embeddings and ``time_ids`` raises, so timed cells prove the served path fed
    them; the graph rows prove they are static inputs of captured graphs (the GPU default)."""
    result, stdout = run_bench(
        tmp_path / "sdxl.json", "--family", "sdxl", "--samplers", "olss-5", "--batches", "1",
        "2", "--no-compile",
    )
    assert result["errors"] == [] and result["skipped"] == []
    meta = result["meta"]
    assert meta["model"] == "tiny-sdxl-architecture-random-weights" and meta["tiny"] is True
    assert set(meta["parameters"]) == {"unet", "vae", "text_encoder", "text_encoder_2"}
    grid = {(c["sampler"], c["batch"]) for c in result["cells"] if c["config"] == "default"}
    assert grid == {("olss-5", 1), ("olss-5", 2)}
    for cell in result["cells"]:
        assert set(cell["stages"]) == STAGES and cell["distinct_images"] is True
        assert cell["stages"]["denoise"]["median_ms"] > 0
    graphs = {c["config"]: c["graphs"] for c in result["cells"]}
    assert graphs["cuda_graphs step"] == 3  # encode, loop, decode at batch 1
    checks = {c["config"]: c["max_pixel_diff_vs_default"] for c in result["image_checks"]}
    assert checks["cuda_graphs step"] == 0 and checks["cuda_graphs loop"] == 0
    (sync,) = result["sync_check"]
    assert sync["steady_per_step"] == [0] * 5
    assert stdout.strip().splitlines()[0].startswith("# tiny-sdxl-architecture-random-weights")


def test_the_sdxl_architecture_has_the_published_parameter_counts(tmp_path: Path) -> None:
    """SDXL base 1.0's configs as facts: built on the meta device (no memory), the pipeline is
    SDXL's with the published sizes (millions of parameters, one decimal)."""
    from diffusers import StableDiffusionXLPipeline

    from bench.bench_model import build_pipeline, parameter_counts
    from devtools.sd_configs import SDXL

    pipe = build_pipeline(SDXL, torch.device("meta"), tmp_path)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == SDXL.resolution == 1024
    millions = {name: round(n / 1e6, 1) for name, n in parameter_counts(pipe).items()}
    assert millions == {"unet": 2567.5, "vae": 83.7, "text_encoder": 123.1,
                        "text_encoder_2": 694.7}


def test_the_sdxl_gpu_check_plan_times_olss5_at_batch_1_and_4_only() -> None:
    plan = plan_from_args(parse_args(["--gpu-check", "--family", "sdxl"]))
    assert plan.spec.name.startswith("sdxl") and plan.spec.resolution == 1024
    assert plan.batches == (1, 4) and [s.name for s in plan.samplers] == ["olss-5"]
    assert not (plan.ablations or plan.compile or plan.profile or plan.service
                or plan.cold_start)
    assert plan_from_args(parse_args(["--tiny", "--family", "sdxl"])).tiny


def test_sd2_mode_serves_v_prediction_with_schedules_fitted_on_v(tmp_path: Path) -> None:
    """``--family sd2``: the worker refuses OLSS schedules fitted on another prediction type at
    start-up, so a timed OLSS cell proves the bench fitted them on ``v`` outputs."""
    result, _ = run_bench(
        tmp_path / "sd2.json", "--family", "sd2", "--samplers", "olss-5", "--batches", "1",
        "--no-ablations", "--no-compile",
    )
    assert result["errors"] == []
    assert result["meta"]["model"] == "tiny-sd2-architecture-random-weights"
    (cell,) = result["cells"]
    assert cell["sampler"] == "olss-5" and cell["stages"]["denoise"]["median_ms"] > 0
