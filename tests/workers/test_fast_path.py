"""The worker fast path: options, what apply_fast_path changes (compile included), and the OLSS
step's fp32 accumulation and freedom from host-device syncs (what the fp16 CUDA path relies on)."""

from __future__ import annotations

import pytest
import torch
from diffusers import StableDiffusionPipeline

from devtools.host_sync import detect_host_syncs
from schedules import OLSSScheduler
from workers.attention import ClassicProcessor, SDPAProcessor
from workers.fast_path import (
    GRAPHING_COMPILE_MODES,
    FastPathOptions,
    apply_fast_path,
    pick_device,
    use_compile_cache,
)
from workers.served_graphs import GraphMode

CPU = torch.device("cpu")


# --------------------------------------------------------------------------- options


def test_cuda_defaults_turn_on_fp16_channels_last_and_step_graphs_but_not_compile() -> None:
    options = FastPathOptions.for_device(torch.device("cuda"))
    assert (options.fp16, options.sdpa, options.channels_last, options.compile) == (
        True,
        True,
        True,
        False,
    )
    assert options.cuda_graphs is GraphMode.STEP and options.fixed_shapes
    assert options.dtype == torch.float16


def test_cpu_defaults_are_fp32_with_sdpa() -> None:
    options = FastPathOptions.for_device(CPU)
    assert (options.fp16, options.sdpa, options.channels_last, options.compile) == (
        False,
        True,
        False,
        False,
    )
    assert options.cuda_graphs is GraphMode.OFF and not options.fixed_shapes
    assert options.dtype == torch.float32


def test_none_overrides_keep_the_device_default_and_others_apply() -> None:
    options = FastPathOptions.for_device(
        torch.device("cuda"), fp16=None, sdpa=False, channels_last=None, compile=True,
        cuda_graphs="loop",
    )
    assert options.fp16 and not options.sdpa and options.channels_last and options.compile
    assert options.cuda_graphs is GraphMode.LOOP
    assert options.label == "fp16+classic-attn+channels_last+compile(default)+graphs(loop)"


def test_unknown_option_and_bad_compile_mode_are_rejected_by_name() -> None:
    with pytest.raises(ValueError, match="fp8"):
        FastPathOptions.for_device(CPU, fp8=True)
    with pytest.raises(ValueError, match="turbo"):
        FastPathOptions(compile_mode="turbo")
    with pytest.raises(ValueError, match="sometimes"):
        FastPathOptions(cuda_graphs="sometimes")


@pytest.mark.parametrize("mode", GRAPHING_COMPILE_MODES)
def test_compile_modes_that_capture_their_own_graphs_refuse_the_workers_graphs(mode: str) -> None:
    with pytest.raises(ValueError, match="captures its own CUDA graphs"):
        FastPathOptions(compile=True, compile_mode=mode, cuda_graphs=GraphMode.STEP)
    assert FastPathOptions(compile=True, compile_mode=mode).compile  # alone they are fine
    no_graphs = FastPathOptions(compile=True, compile_mode="max-autotune-no-cudagraphs",
                                cuda_graphs=GraphMode.LOOP)
    assert no_graphs.fixed_shapes


def test_the_compile_cache_goes_to_the_given_folder(tmp_path, monkeypatch) -> None:
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "elsewhere"))  # restored after
    monkeypatch.setattr(inductor_config, "fx_graph_cache", False)
    use_compile_cache(tmp_path / "torch-compile")
    assert cache_dir() == str(tmp_path / "torch-compile")
    assert inductor_config.fx_graph_cache is True


def test_pick_device() -> None:
    assert pick_device("cpu") == CPU
    assert pick_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="OLSS_DEVICE"):
            pick_device("cuda")


# --------------------------------------------------------------------------- apply_fast_path


def _attention_processors(pipe: StableDiffusionPipeline) -> set[type]:
    return {
        type(p) for p in [*pipe.unet.attn_processors.values(), *pipe.vae.attn_processors.values()]
    }


def _image(pipe: StableDiffusionPipeline) -> torch.Tensor:
    return pipe(
        "a red square",
        num_inference_steps=2,
        guidance_scale=7.5,
        generator=torch.Generator().manual_seed(0),
        output_type="pt",
    ).images


def test_sdpa_switch_selects_the_attention_everywhere_and_keeps_the_image(
    tiny_pipeline: StableDiffusionPipeline,
) -> None:
    pipe = apply_fast_path(tiny_pipeline, CPU, FastPathOptions(sdpa=False))
    assert _attention_processors(pipe) == {ClassicProcessor}
    assert pipe.text_encoder.config._attn_implementation == "eager"
    classic = _image(pipe)
    pipe = apply_fast_path(pipe, CPU, FastPathOptions(sdpa=True))
    assert _attention_processors(pipe) == {SDPAProcessor}
    assert pipe.text_encoder.config._attn_implementation == "sdpa"
    torch.testing.assert_close(_image(pipe), classic, atol=1e-4, rtol=1e-4)


def test_channels_last_and_fp16_change_layout_and_dtype(
    tiny_pipeline: StableDiffusionPipeline,
) -> None:
    reference = _image(tiny_pipeline)
    pipe = apply_fast_path(tiny_pipeline, CPU, FastPathOptions(channels_last=True))
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    assert pipe.vae.decoder.conv_in.weight.is_contiguous()  # GroupNorm-bound: NCHW decodes faster
    torch.testing.assert_close(_image(pipe), reference, atol=1e-4, rtol=1e-4)
    pipe = apply_fast_path(pipe, CPU, FastPathOptions(fp16=True))
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float16}
    assert pipe.vae.dtype == pipe.text_encoder.dtype == torch.float16


def test_compile_wraps_the_unet_and_decoder_and_serves_the_same_images(
    tiny_pipeline: StableDiffusionPipeline,
) -> None:
    """Full-graph compile of the UNet and VAE decoder (traced by dynamo on the first call; the
    ``eager`` backend skips code generation so this runs on any CPU)."""
    reference = _image(tiny_pipeline)
    options = FastPathOptions(compile=True, compile_backend="eager")
    pipe = apply_fast_path(tiny_pipeline, CPU, options)
    _image(pipe)  # the first call at this shape compiles
    assert pipe.unet._compiled_call_impl is not None
    assert pipe.vae.decoder._compiled_call_impl is not None
    torch.testing.assert_close(_image(pipe), reference, atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- OLSS step


def _olss(coefficients: list[list[float]], timesteps: list[int] | None = None) -> OLSSScheduler:
    k = len(coefficients)
    timesteps = timesteps or [999 - 200 * i for i in range(k)]
    return OLSSScheduler(timesteps=timesteps, coefficients=coefficients)


def test_olss_step_accumulates_in_fp32_and_returns_fp16() -> None:
    """With cancelling weights an fp16 accumulation is off by many fp16 ulps; an fp32 one
    rounds once, to within one ulp of the exact combination of the fp16 inputs."""
    gen = torch.Generator().manual_seed(0)
    x_init = torch.randn(2, 4, 8, 8, generator=gen).half()
    e0 = (x_init.float() + 1e-3 * torch.randn(2, 4, 8, 8, generator=gen)).half()
    e1 = (x_init.float() - 1e-3 * torch.randn(2, 4, 8, 8, generator=gen)).half()
    coefficients = [[1000.0, -1000.0], [0.5, 300.0, -300.0]]
    scheduler = _olss(coefficients)
    scheduler.set_timesteps(2)
    x = x_init
    for i, (t, e) in enumerate(zip(scheduler.timesteps, (e0, e1), strict=True)):
        x = scheduler.step(e, t, x).prev_sample
        assert x.dtype == torch.float16
        terms = (x_init, e0, e1)[: i + 2]
        exact = sum(w * v.double() for w, v in zip(coefficients[i], terms, strict=True))
        rounded = exact.half().double()
        ulp = torch.finfo(torch.float16).eps * rounded.abs().clamp(min=2.0**-14)
        assert ((x.double() - rounded).abs() <= ulp).all(), f"step {i} not accumulated in fp32"
        fp16_sum = sum(w * v for w, v in zip(coefficients[i], terms, strict=True))
        assert not torch.equal(fp16_sum, x), "inputs too easy: fp16 accumulation would pass too"


def _meta_run(scheduler: OLSSScheduler, shape: tuple[int, ...]) -> list[int]:
    """One standard-loop run on the meta device; host syncs found per step."""
    scheduler.set_timesteps(scheduler.num_inference_steps, device="meta")
    x = torch.empty(shape, device="meta", dtype=torch.float16) * scheduler.init_noise_sigma
    per_step = []
    for t in scheduler.timesteps:
        with detect_host_syncs("meta") as found:
            model_input = scheduler.scale_model_input(x, t)
            out = model_input * 0.5  # stands in for the UNet
            x = scheduler.step(out, t, x).prev_sample
        per_step.append(len(found))
    return per_step


def test_olss_step_makes_no_host_device_sync_on_a_warm_scheduler() -> None:
    """On the meta device any value read raises or is flagged and any host->device copy is
    flagged, as on a GPU. ``set_timesteps(device=...)`` uploads the coefficients before the
    loop, so no step syncs, in the first run or any later one."""
    scheduler = _olss([[0.9 - 0.1 * i] + [0.1] * (i + 1) for i in range(5)])
    first = _meta_run(scheduler, (2, 4, 8, 8))
    assert first == [0] * 5, f"syncs per step in the first run: {first}"
    steady = _meta_run(scheduler, (2, 4, 8, 8))
    assert steady == [0] * 5, f"syncs per step once warm: {steady}"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_olss_loop_runs_under_cuda_sync_debug_mode_error() -> None:
    scheduler = _olss([[0.9 - 0.1 * i] + [0.1] * (i + 1) for i in range(5)])
    for _ in range(2):  # the first run may upload coefficients; the second must not sync
        scheduler.set_timesteps(5, device="cuda")
        x = torch.randn(2, 4, 64, 64, device="cuda", dtype=torch.float16)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if _ else "default")
        try:
            for t in scheduler.timesteps:
                x = scheduler.step(x * 0.5, t, x).prev_sample
        finally:
            torch.cuda.set_sync_debug_mode("default")
