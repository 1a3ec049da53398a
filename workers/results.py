"""Encode generated images for storage: PNG (with the generation parameters), JPEG or WebP."""

from __future__ import annotations

import io

from PIL import Image
from PIL.PngImagePlugin import PngInfo
from pydantic import BaseModel

from olss_core.protocol import JobSpec

PNG_PARAMETERS_KEY = "parameters"
LOSSY_QUALITY = 90


class ImageParameters(BaseModel):
    """What made one image; stored as JSON in the PNG text chunk ``parameters``."""

    model: str
    prompt: str
    negative_prompt: str | None
    seed: int
    steps: int
    guidance_scale: float
    width: int
    height: int
    scheduler: str
    schedule: str | None
    job_id: str

    @classmethod
    def of(cls, spec: JobSpec, index: int, schedule: str | None, job_id: str) -> ImageParameters:
        return cls(
            model=spec.model,
            prompt=spec.prompt,
            negative_prompt=spec.negative_prompt,
            seed=spec.seeds[index],
            steps=spec.steps,
            guidance_scale=spec.guidance_scale,
            width=spec.width,
            height=spec.height,
            scheduler=spec.scheduler,
            schedule=schedule,
            job_id=job_id,
        )


def encode_image(image: Image.Image, fmt: str, parameters: ImageParameters) -> bytes:
    """``image`` as ``fmt`` bytes; PNGs carry ``parameters`` in a text chunk."""
    buffer = io.BytesIO()
    if fmt == "png":
        info = PngInfo()
        info.add_text(PNG_PARAMETERS_KEY, parameters.model_dump_json())
        image.save(buffer, format="PNG", pnginfo=info)
    elif fmt == "jpeg":
        image.convert("RGB").save(buffer, format="JPEG", quality=LOSSY_QUALITY)
    elif fmt == "webp":
        image.save(buffer, format="WEBP", quality=LOSSY_QUALITY)
    else:
        raise ValueError(f"unknown output format {fmt!r}; expected png, jpeg or webp")
    return buffer.getvalue()


def read_parameters(png: bytes) -> ImageParameters:
    """The parameters embedded by ``encode_image`` in a PNG."""
    with Image.open(io.BytesIO(png)) as image:
        return ImageParameters.model_validate_json(image.text[PNG_PARAMETERS_KEY])
