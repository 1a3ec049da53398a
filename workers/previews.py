"""Step previews: a small picture of a running job's latents, cheap enough for every step.

The picture comes from a linear latent-to-RGB projection, AUTOMATIC1111's "Approx cheap" live
preview: each latent pixel's C channels map to RGB by ``rgb = W z + b`` (W: 3 x C, b: 3), which
approximates the VAE decoder at 1/8 (the VAE's downsampling factor) of the resolution without
running it. ``LatentProjection.fit`` finds W and b by least squares (``torch.linalg.lstsq``)
against the model's own VAE: synthetic images (smooth random colour fields) are encoded, their
latents decoded again, and each decoded image is area-pooled to the latent grid, so every latent
pixel has the RGB the decoder makes of it. The fit runs once per model at worker start-up and is
cached in ``OLSS_CACHE_DIR`` (``bench/previews.py`` fits it too and reports its error and cost).

A preview is at most ``PREVIEW_MAX_SIDE`` pixels on its longer side (the image's own size when
smaller), WebP, base64 in the ``step`` event (``olss_core.protocol.Preview``). Only jobs that
asked (``JobSpec.preview_every``) get one, on their n-th steps but the last (the image itself
comes then). The serving thread only projects the rows it needs and starts their copy to the
host (without a device sync on CUDA); encoding and the Redis write run on a thread of their own,
so a batch's other jobs do not wait for them (``docs/BENCHMARKS.md``, step previews). Every step
event of a previewing job goes through that thread, so a job's events stay in step order.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import AutoencoderKL
from PIL import Image

from olss_core.protocol import Preview
from workers.image_decoding import decode_to_pixels

PREVIEW_MAX_SIDE = 128
PREVIEW_FORMAT = "webp"
PREVIEW_QUALITY = 60
FIT_IMAGES = 8
FIT_GRIDS = (2, 4, 8)
"""Sides of the random colour grids that synthetic fit images are smoothed from."""
FIT_SEED = 0
CACHE_FOLDER = "previews"
CACHE_VERSION = 1

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LatentProjection:
    """``rgb = weight @ z + bias`` per latent pixel, in [0, 1]; ``weight``: 3 x C."""

    weight: tuple[tuple[float, ...], ...]
    bias: tuple[float, float, float]

    @classmethod
    def fit(cls, latents: torch.Tensor, decoded: torch.Tensor) -> LatentProjection:
        """Least squares of ``decoded`` (N, 3, H, W, in [0, 1]) on ``latents`` (N, C, h, w):
        the decoded images are area-pooled to h x w first."""
        latents = latents.detach().float().cpu()
        pooled = torch.nn.functional.adaptive_avg_pool2d(
            decoded.detach().float().cpu(), latents.shape[-2:]
        )
        z = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
        rgb = pooled.permute(0, 2, 3, 1).reshape(-1, 3)
        design = torch.cat([z, torch.ones(len(z), 1)], dim=1)
        solution = torch.linalg.lstsq(design, rgb).solution  # (C + 1, 3)
        weight = tuple(tuple(float(v) for v in row) for row in solution[:-1].T)
        bias = tuple(float(v) for v in solution[-1])
        return cls(weight, (bias[0], bias[1], bias[2]))

    def tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """``weight`` (3, C) and ``bias`` (3,) as float32 tensors on ``device``. Uploading them
        from pageable host memory synchronises the device's stream, so a caller that projects
        often keeps them (``StepPreviews``)."""
        return (torch.tensor(self.weight, device=device, dtype=torch.float32),
                torch.tensor(self.bias, device=device, dtype=torch.float32))

    def apply(self, latents: torch.Tensor,
              tensors: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """(B, h, w, 3) uint8 pictures of (B, C, h, w) latents, on their device; ``tensors``:
        this projection's :meth:`tensors` on that device, if the caller keeps them."""
        weight, bias = tensors or self.tensors(latents.device)
        rgb = torch.einsum("bchw,kc->bhwk", latents.float(), weight) + bias
        return (rgb.clamp(0, 1) * 255).round().to(torch.uint8)

    def to_json(self) -> str:
        return json.dumps({"version": CACHE_VERSION, "weight": self.weight, "bias": self.bias})

    @classmethod
    def from_json(cls, text: str) -> LatentProjection:
        data = json.loads(text)
        if data.get("version") != CACHE_VERSION:
            raise ValueError(f"projection cache version {data.get('version')!r}")
        weight = tuple(tuple(float(v) for v in row) for row in data["weight"])
        bias = tuple(float(v) for v in data["bias"])
        return cls(weight, (bias[0], bias[1], bias[2]))


def synthetic_images(count: int, side: int, seed: int = FIT_SEED) -> torch.Tensor:
    """(count, 3, side, side) images in [-1, 1]: random colour grids, bilinearly smoothed."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for n in range(count):
        grid = FIT_GRIDS[n % len(FIT_GRIDS)]
        colours = torch.rand(1, 3, grid, grid, generator=generator)
        images.append(torch.nn.functional.interpolate(
            colours, size=(side, side), mode="bilinear", align_corners=False
        ))
    return torch.cat(images) * 2 - 1


def fit_projection(vae: AutoencoderKL, side: int, count: int = FIT_IMAGES) -> LatentProjection:
    """The projection of ``vae``'s latents (as the denoising loop holds them: scaled by
    ``scaling_factor``) to its decodes, from ``count`` synthetic images of ``side`` pixels,
    one at a time (the shape every worker has warmed up)."""
    parameter = next(vae.parameters())
    latents, decoded = [], []
    with torch.inference_mode():
        for image in synthetic_images(count, side):
            pixels = image[None].to(parameter.device, parameter.dtype)
            z = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor
            latents.append(z.float().cpu())
            decoded.append(decode_to_pixels(vae, z).permute(0, 3, 1, 2).float().cpu() / 255)
    return LatentProjection.fit(torch.cat(latents), torch.cat(decoded))


def cached_projection(vae: AutoencoderKL, side: int, cache_dir: Path, model_key: str
                      ) -> LatentProjection:
    """``fit_projection`` for ``model_key``, read from (or written to) ``cache_dir``."""
    name = model_key.replace("/", "--")
    path = cache_dir / CACHE_FOLDER / f"{name}.json"
    try:
        return LatentProjection.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, KeyError):
        pass
    projection = fit_projection(vae, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(projection.to_json(), encoding="utf-8")
    log.info("fitted the preview projection of %s: %s", model_key, path)
    return projection


def preview_size(width: int, height: int, max_side: int = PREVIEW_MAX_SIDE) -> tuple[int, int]:
    """The preview's size: the image's aspect, its longer side at most ``max_side``."""
    scale = min(1.0, max_side / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def encode_preview(pixels: np.ndarray, size: tuple[int, int]) -> Preview:
    """A (h, w, 3) uint8 picture resized to ``size`` as a base64 WebP ``Preview``."""
    picture = Image.fromarray(pixels).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    picture.save(buffer, format=PREVIEW_FORMAT.upper(), quality=PREVIEW_QUALITY)
    return Preview(content_type=f"image/{PREVIEW_FORMAT}", width=size[0], height=size[1],
                   data_base64=base64.b64encode(buffer.getvalue()).decode())


Publish = Callable[[Sequence, int, int, Mapping[str, Preview]], None]
"""``publish(jobs, step, total, previews)``: the step events of ``jobs`` with their previews
(``JobLifecycle.progress``)."""


class StepPreviews:
    """Previews of a worker's batches: projected on the serving thread, published on another."""

    def __init__(self, projection: LatentProjection, publish: Publish) -> None:
        self.projection = projection
        self._publish = publish
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="previews")
        self._pending: list[Future[None]] = []
        self._tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def send(self, jobs: Sequence, rows: Mapping[str, int], latents: torch.Tensor, step: int,
             total: int) -> None:
        """Publish the step events of ``jobs`` in the background, in order (``drain`` waits);
        a job in ``rows`` (by id) gets a preview of that row of ``latents``."""
        previewed = [job.id for job in jobs if job.id in rows]
        host = pixels = done = None
        if previewed:
            # rows as views and the projection's tensors kept on the device: neither uploads
            # from the host, which would wait for the step in flight on CUDA
            picked = torch.stack([latents[rows[job_id]] for job_id in previewed])
            if latents.device not in self._tensors:
                self._tensors[latents.device] = self.projection.tensors(latents.device)
            pixels = self.projection.apply(picked, self._tensors[latents.device])
            host = pixels
            if pixels.device.type == "cuda":
                host = torch.empty(pixels.shape, dtype=pixels.dtype, pin_memory=True)
                host.copy_(pixels, non_blocking=True)
                done = torch.cuda.Event()
                done.record(torch.cuda.current_stream(pixels.device))
        spec = jobs[0].spec
        size = preview_size(spec.width, spec.height)
        self._pending.append(self._executor.submit(  # pixels: alive until copied
            self._encode_and_publish, list(jobs), previewed, host, pixels, done, size, step, total
        ))

    def _encode_and_publish(self, jobs: list, previewed: list[str], host: torch.Tensor | None,
                            _device_pixels: torch.Tensor | None, done: torch.cuda.Event | None,
                            size: tuple[int, int], step: int, total: int) -> None:
        try:
            previews = {}
            if host is not None:
                if done is not None:
                    done.synchronize()
                pictures = host.numpy()
                previews = {job_id: encode_preview(pictures[n], size)
                            for n, job_id in enumerate(previewed)}
            self._publish(jobs, step, total, previews)
        except Exception:  # a preview must never fail its batch
            log.exception("step %d events of %d job(s) not published", step, len(jobs))

    def drain(self) -> None:
        """Return once every preview started is published."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def close(self) -> None:
        self.drain()
        self._executor.shutdown(wait=True)
