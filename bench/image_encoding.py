"""Image encoding benchmark: the worker's own ``encode_image`` per format and PNG level.

Times ``workers.results.encode_image`` (what the worker's result stage runs for every image,
metadata included) on a photo-like synthetic image: smooth colour fields (upsampled low-
resolution noise) with fine grain on top, like a diffusion model's output; pure noise would
be the worst case for PNG, a flat image the best. Reports milliseconds per image (median of
``--repeats``), the file size, and both as ratios to PIL's default PNG level 6, measured in
the same run.

    .venv/bin/python -m bench.image_encoding
    .venv/bin/python -m bench.image_encoding --sizes 512 1024 --repeats 15
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from olss_core.image_parameters import ImageParameters
from olss_core.protocol import JobSpec
from workers.results import encode_image

BASELINE_LEVEL = 6
"""PIL's default zlib level for PNG, what the worker used before OLSS_PNG_COMPRESS_LEVEL."""


def photo_like(size: int, seed: int = 0) -> Image.Image:
    """Smooth colour fields from 16x16 noise upsampled, plus grain of 3 levels' deviation."""
    rng = np.random.default_rng(seed)
    coarse = Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))
    smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float64)
    grain = rng.normal(0.0, 3.0, smooth.shape)
    return Image.fromarray(np.clip(smooth + grain, 0, 255).astype(np.uint8))


def time_encoding(image: Image.Image, fmt: str, level: int, repeats: int,
                  parameters: ImageParameters) -> tuple[float, int]:
    """Median milliseconds per ``encode_image`` call, and the encoded size in bytes."""
    data = encode_image(image, fmt, parameters, level)  # warm
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        data = encode_image(image, fmt, parameters, level)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times), len(data)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--levels", type=int, nargs="+", default=[0, 1, 3, 6, 9])
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs, {platform.processor() or 'cpu'}")
    print("| size | format | ms per image | size (KB) | time / PNG-6 | size / PNG-6 |")
    print("|---|---|---:|---:|---:|---:|")
    for size in args.sizes:
        spec = JobSpec(model="bench", prompt="a lighthouse on a cliff at dusk", width=size,
                       height=size, steps=5, guidance_scale=7.5, seed=1)
        parameters = ImageParameters.of(spec, 0, "bench__5steps", "job-bench")
        image = photo_like(size)
        runs = [(f"png {level}", "png", level) for level in args.levels]
        runs += [("jpeg", "jpeg", BASELINE_LEVEL), ("webp", "webp", BASELINE_LEVEL)]
        measured = {name: time_encoding(image, fmt, level, args.repeats, parameters)
                    for name, fmt, level in runs}
        base_ms, base_bytes = measured.get(f"png {BASELINE_LEVEL}") or time_encoding(
            image, "png", BASELINE_LEVEL, args.repeats, parameters)
        for name, (ms, nbytes) in measured.items():
            print(f"| {size}x{size} | {name} | {ms:.1f} | {nbytes / 1024:.0f} | "
                  f"{ms / base_ms:.2f} | {nbytes / base_bytes:.2f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
