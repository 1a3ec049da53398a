"""Device placement and the CUDA fast path for a diffusers Stable Diffusion pipeline (SD 1.x,
SD 2.x or SDXL: :mod:`workers.model_family`).

Each optimisation is a separate switch so benchmarks can measure each one's effect:

* ``fp16``: weights and activations in half precision. The OLSS update itself accumulates in
  fp32 inside :class:`schedules.OLSSScheduler`; only the stored sample is fp16.
* ``sdpa``: PyTorch's ``scaled_dot_product_attention`` (flash / memory-efficient kernels) in
  the UNet, the VAE and the CLIP text encoder; off means the classic attention that materialises
  the full attention matrix (diffusers ``AttnProcessor``, transformers ``"eager"``). Both come as
  :mod:`workers.attention`'s processors, which spare every attention call a signature lookup.
* ``channels_last``: NHWC memory format for the UNet's weights, which lets cuDNN pick its
  tensor-core convolution kernels without layout transposes. The VAE stays NCHW: PyTorch's
  GroupNorm copies a channels-last input to NCHW and back, and the decoder at full resolution is
  mostly GroupNorm and convolutions, so on an H200 it decoded a 512x512 SD 1.5 image in 20.7 ms
  NCHW against 25.8 ms channels-last (docs/BENCHMARKS.md, "The served path on an H200").
* ``compile``: ``torch.compile`` of the UNet and the VAE decoder for static shapes. Compilation
  happens on the first call at each shape; the worker makes that call for every padded batch size
  it serves before it takes requests (``workers.warm_up``, ``workers.batch_buckets``), and its
  caches live on the cache volume (:func:`use_compile_cache`), so a restart reuses them.
* ``cuda_graphs``: the served OLSS loop, text encoder and VAE decoder captured as CUDA graphs in
  warm-up (``workers.served_graphs``): ``step`` (a graph per denoising step), ``loop`` (one for
  the whole loop) or ``off``.

On CUDA fp16, channels-last and step graphs default to on and ``compile`` to off; on CPU
everything is off (fp32) except SDPA. cuDNN autotuning (``torch.backends.cudnn.benchmark``) is
turned on for CUDA in every configuration: the worker serves a few fixed shapes, and its warm-up
pays the search. An SDXL VAE whose config says ``force_upcast`` stays in fp32 under ``fp16``
(it overflows in half precision, as ``StableDiffusionXLPipeline`` knows); the latents are cast to
it for the decode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

import torch
from diffusers import AutoPipelineForText2Image, DiffusionPipeline

from workers.attention import ClassicProcessor, SDPAProcessor
from workers.model_family import pipeline_family
from workers.served_graphs import GraphMode

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
GRAPHING_COMPILE_MODES = ("reduce-overhead", "max-autotune")
"""Modes in which inductor captures CUDA graphs of its own, which cannot nest in the worker's."""


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` if given (``cpu``, ``cuda``, ``cuda:1``), else CUDA when present, else CPU."""
    if requested and requested != "auto":
        device = torch.device(requested)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"OLSS_DEVICE={requested!r} but no CUDA device is available")
        return device
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass(frozen=True)
class FastPathOptions:
    """Which optimisations to apply. ``for_device`` gives the defaults for a device.

    Args:
        fp16: half-precision weights and activations (``dtype`` is then ``torch.float16``).
        sdpa: PyTorch SDPA attention; ``False`` selects the classic attention.
        channels_last: NHWC memory format for the UNet (the VAE stays NCHW).
        compile: ``torch.compile`` the UNet and the VAE decoder (static shapes, full graph).
        compile_mode: the ``torch.compile`` mode, one of :data:`COMPILE_MODES`. ``"default"``
            compiles in about a minute per shape; the autotuning modes take much longer.
        compile_backend: the ``torch.compile`` backend; ``"eager"`` traces without generating
            code (used by tests on machines without a GPU).
        cuda_graphs: which CUDA graphs the engine captures (:class:`GraphMode`; a string is
            converted).
    """

    fp16: bool = False
    sdpa: bool = True
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"
    compile_backend: str = "inductor"
    cuda_graphs: GraphMode = GraphMode.OFF

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"compile_mode {self.compile_mode!r} is not one of {', '.join(COMPILE_MODES)}"
            )
        object.__setattr__(self, "cuda_graphs", GraphMode(self.cuda_graphs))
        graphing = self.compile and self.compile_mode in GRAPHING_COMPILE_MODES
        if graphing and self.cuda_graphs is not GraphMode.OFF:
            raise ValueError(
                f"compile_mode {self.compile_mode!r} captures its own CUDA graphs: with "
                f"cuda_graphs={self.cuda_graphs.value!r} use compile_mode 'default' or "
                "'max-autotune-no-cudagraphs', or cuda_graphs 'off'"
            )

    @classmethod
    def for_device(cls, device: torch.device, **overrides: bool | str | None) -> FastPathOptions:
        """Defaults for ``device`` with ``overrides`` applied; an override of ``None`` keeps the
        default, so unset settings (``OLSS_FP16`` and the like) can be passed straight through.
        """
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise ValueError(f"unknown fast-path option(s) {unknown}; valid: {sorted(names)}")
        on_cuda = torch.device(device).type == "cuda"
        defaults = cls(
            fp16=on_cuda,
            sdpa=True,
            channels_last=on_cuda,
            compile=False,
            cuda_graphs=GraphMode.STEP if on_cuda else GraphMode.OFF,
        )
        return replace(defaults, **{k: v for k, v in overrides.items() if v is not None})

    @property
    def dtype(self) -> torch.dtype:
        return torch.float16 if self.fp16 else torch.float32

    @property
    def label(self) -> str:
        """Short human-readable name, e.g. ``fp16+sdpa+channels_last``."""
        parts = [
            "fp16" if self.fp16 else "fp32",
            "sdpa" if self.sdpa else "classic-attn",
        ]
        if self.channels_last:
            parts.append("channels_last")
        if self.compile:
            parts.append(f"compile({self.compile_mode})")
        if self.cuda_graphs is not GraphMode.OFF:
            parts.append(f"graphs({self.cuda_graphs.value})")
        return "+".join(parts)

    @property
    def fixed_shapes(self) -> bool:
        """Whether every batch size is a compile or a capture (batches are then padded)."""
        return self.compile or self.cuda_graphs is not GraphMode.OFF


def set_attention(pipe: DiffusionPipeline, sdpa: bool) -> None:
    """SDPA attention (``True``) or the classic attention (``False``) in every model of ``pipe``.

    diffusers already defaults to SDPA on torch 2, so ``False`` must be set explicitly for a
    benchmark's "off" row to measure anything.
    """
    processor = SDPAProcessor() if sdpa else ClassicProcessor()
    pipe.unet.set_attn_processor(processor)
    pipe.vae.set_attn_processor(processor)
    for name in ("text_encoder", "text_encoder_2"):
        text_encoder = getattr(pipe, name, None)
        if text_encoder is not None and hasattr(text_encoder, "set_attn_implementation"):
            text_encoder.set_attn_implementation("sdpa" if sdpa else "eager")


def apply_fast_path(
    pipe: DiffusionPipeline, device: torch.device, options: FastPathOptions
) -> DiffusionPipeline:
    """Move ``pipe`` to ``device`` in the options' dtype and apply the enabled optimisations.

    The pipeline is changed in place and returned. Compilation is lazy: it happens on the first
    call at each shape.
    """
    device = torch.device(device)
    if pipe.unet.dtype != options.dtype:
        pipe = pipe.to(device=device, dtype=options.dtype)
    else:
        pipe = pipe.to(device)
    if pipeline_family(pipe).added_conditioning and getattr(pipe.vae.config, "force_upcast", False):
        pipe.vae.to(dtype=torch.float32)
    set_attention(pipe, options.sdpa)
    memory_format = torch.channels_last if options.channels_last else torch.contiguous_format
    pipe.unet.to(memory_format=memory_format)
    pipe.vae.to(memory_format=torch.contiguous_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    if options.compile:
        compile_models(pipe, options)
    pipe.set_progress_bar_config(disable=True)
    return pipe


COMPILED_SHAPES_LIMIT = 64


def compile_models(pipe: DiffusionPipeline, options: FastPathOptions) -> None:
    """``torch.compile`` the UNet and the VAE decoder in place (``nn.Module.compile``).

    The modules keep their class and config, so the pipeline and diffusers' helpers still see a
    ``UNet2DConditionModel`` and an ``AutoencoderKL``. Shapes are static (``dynamic=False``):
    each served batch size and resolution compiles once, on its first call.
    """
    kwargs: dict[str, object] = {
        "backend": options.compile_backend,
        "fullgraph": True,
        "dynamic": False,
    }
    if options.compile_backend == "inductor":
        kwargs["mode"] = options.compile_mode
    # Every (batch size, resolution) is its own static graph; dynamo's default limit of 8
    # recompiles per function would fall back to eager for a worker serving more shapes.
    dynamo_config = torch._dynamo.config
    dynamo_config.cache_size_limit = max(dynamo_config.cache_size_limit, COMPILED_SHAPES_LIMIT)
    pipe.unet.compile(**kwargs)
    pipe.vae.decoder.compile(**kwargs)


def use_compile_cache(directory: Path) -> None:
    """Keep ``torch.compile``'s on-disk caches in ``directory`` (the worker's cache volume).

    Inductor's FX-graph cache and the AOTAutograd cache (on by default; set here so it holds
    whatever a build defaults to) store the generated code, and Triton keeps its compiled
    kernels beside them (``TORCHINDUCTOR_CACHE_DIR``, which inductor reads when it first
    compiles). A restarted worker then only traces its models again: no code generation, no
    kernel compilation, no autotuning that was cached.
    """
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    directory.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(directory)
    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True


def stop_compiling() -> None:
    """After warm-up: a shape that was not compiled runs eagerly rather than compiling during a
    request (``torch.compiler.set_stance("eager_on_recompile")``)."""
    torch.compiler.set_stance("eager_on_recompile")


def read_pipeline(model: str, dtype: torch.dtype = torch.float32) -> DiffusionPipeline:
    """A Hugging Face model id or local diffusers folder as its text-to-image pipeline, on CPU.

    ``AutoPipelineForText2Image`` picks the pipeline class of the folder's ``model_index.json``
    (``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``); a pipeline with a safety
    checker loads without it. Weights load directly in ``dtype``.
    """
    components = DiffusionPipeline.load_config(model)
    no_checker = (
        {"safety_checker": None, "requires_safety_checker": False}
        if "safety_checker" in components
        else {}
    )
    return AutoPipelineForText2Image.from_pretrained(model, dtype=dtype, **no_checker)


def load_pipeline(
    model: str, device: torch.device, options: FastPathOptions
) -> DiffusionPipeline:
    """Load a model (:func:`read_pipeline`) and apply the fast path. fp16 weights are loaded
    directly in half precision, so a CUDA worker never holds an fp32 copy."""
    return apply_fast_path(read_pipeline(model, options.dtype), device, options)
