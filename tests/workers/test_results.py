"""Images are stored as PNG (with the generation parameters), JPEG or WebP."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from olss_core.protocol import JobSpec
from workers.results import ImageParameters, encode_image, read_parameters

SPEC = JobSpec(
    model="m",
    prompt="a fox",
    negative_prompt="blur",
    width=32,
    height=32,
    steps=5,
    guidance_scale=7.5,
    seed=11,
    num_images=2,
)


def test_png_embeds_the_generation_parameters() -> None:
    parameters = ImageParameters.of(SPEC, 1, "m__5steps", "job1")
    png = encode_image(Image.new("RGB", (32, 32), "red"), "png", parameters)
    stored = read_parameters(png)
    assert stored == parameters
    assert (stored.seed, stored.prompt, stored.schedule) == (12, "a fox", "m__5steps")


@pytest.mark.parametrize(("fmt", "pil_name"), [("jpeg", "JPEG"), ("webp", "WEBP")])
def test_lossy_formats_decode(fmt: str, pil_name: str) -> None:
    data = encode_image(
        Image.new("RGB", (32, 32), "blue"), fmt, ImageParameters.of(SPEC, 0, None, "job1")
    )
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == (pil_name, (32, 32))
