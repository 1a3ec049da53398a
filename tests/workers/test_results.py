"""Images carry what made them: A1111's infotext for A1111/Civitai readers, and the full JSON."""

from __future__ import annotations

import io
import json
import re

import pytest
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from olss_core.protocol import JobSpec
from olss_core.settings import Settings
from workers.results import (
    EXIF_IFD,
    USER_COMMENT,
    ImageParameters,
    encode_image,
    read_infotext,
    read_parameters,
)

SPEC = JobSpec(
    model="m",
    prompt='a fox, in "snow": at dusk',
    negative_prompt="blur",
    width=32,
    height=24,
    steps=5,
    guidance_scale=7.5,
    seed=11,
    num_images=2,
)
FORMATS = [("png", "PNG"), ("jpeg", "JPEG"), ("webp", "WEBP")]
PNG_LEVEL = Settings.model_fields["png_compress_level"].default
FIELD = re.compile(r'(?:^|, )([^:,]+): ("(?:[^"\\]|\\.)*"|[^,]*)')
"""``Key: value`` of the infotext's last line; a value with commas or colons is JSON-quoted."""


def parse_infotext(text: str) -> tuple[str, str, dict[str, str]]:
    """(prompt, negative prompt, fields), the way A1111 and Civitai read an infotext."""
    *head, last = text.split("\n")
    prompt_lines, negative = [], ""
    for line in head:
        if line.startswith("Negative prompt:"):
            negative = line.removeprefix("Negative prompt:").strip()
        else:
            prompt_lines.append(line)
    fields = {}
    for key, value in FIELD.findall(last):
        fields[key] = json.loads(value) if value.startswith('"') else value
    return "\n".join(prompt_lines), negative, fields


def test_the_png_level_changes_the_size_and_never_the_pixels() -> None:
    gradient = Image.linear_gradient("L").convert("RGB")  # 256x256, very compressible
    parameters = ImageParameters.of(SPEC, 0, None, "job1")
    sizes = {}
    for level in (0, 1, 9):
        data = encode_image(gradient, "png", parameters, level)
        with Image.open(io.BytesIO(data)) as image:
            assert image.tobytes() == gradient.tobytes()
        assert read_parameters(data) == parameters
        sizes[level] = len(data)
    assert sizes[0] > 10 * sizes[1] and sizes[1] >= sizes[9]  # 0 stores the pixels as they are


@pytest.mark.parametrize(("fmt", "pil_name"), FORMATS)
def test_every_format_carries_the_full_parameters(fmt: str, pil_name: str) -> None:
    parameters = ImageParameters.of(SPEC, 1, "m__5steps", "job1")
    data = encode_image(Image.new("RGB", (32, 24), "red"), fmt, parameters, PNG_LEVEL)
    with Image.open(io.BytesIO(data)) as image:
        assert (image.format, image.size) == (pil_name, (32, 24))
    stored = read_parameters(data)
    assert stored == parameters
    assert (stored.seed, stored.prompt, stored.schedule) == (12, SPEC.prompt, "m__5steps")


@pytest.mark.parametrize(("fmt", "pil_name"), FORMATS)
def test_every_format_carries_a1111_infotext(fmt: str, pil_name: str) -> None:
    parameters = ImageParameters.of(SPEC, 0, "m__5steps", "job1")
    data = encode_image(Image.new("RGB", (32, 24), "blue"), fmt, parameters, PNG_LEVEL)
    prompt, negative, fields = parse_infotext(read_infotext(data))
    assert (prompt, negative) == (SPEC.prompt, "blur")
    assert fields == {
        "Steps": "5", "Sampler": "OLSS", "CFG scale": "7.5", "Seed": "11", "Size": "32x24",
        "Model": "m", "OLSS schedule": "m__5steps",
    }


def test_png_infotext_is_the_chunk_a1111_reads() -> None:
    data = encode_image(Image.new("RGB", (8, 8)), "png",
                        ImageParameters.of(SPEC, 0, None, "job1"), PNG_LEVEL)
    with Image.open(io.BytesIO(data)) as image:
        assert image.text["parameters"].startswith(SPEC.prompt + "\nNegative prompt: blur\n")


def test_jpeg_user_comment_is_exif_unicode() -> None:
    data = encode_image(Image.new("RGB", (8, 8)), "jpeg",
                        ImageParameters.of(SPEC, 0, None, "job1"), PNG_LEVEL)
    with Image.open(io.BytesIO(data)) as image:
        comment = image.getexif().get_ifd(EXIF_IFD)[USER_COMMENT]
    assert comment[:8] == b"UNICODE\x00"
    assert comment[8:].decode("utf-16-be").startswith(SPEC.prompt)


def test_no_negative_prompt_means_no_negative_line() -> None:
    spec = SPEC.model_copy(update={"negative_prompt": None, "scheduler": "dpmsolver++"})
    text = ImageParameters.of(spec, 0, None, "job1").infotext()
    assert "Negative prompt" not in text
    assert parse_infotext(text)[2]["Sampler"] == "DPM++ 2M"


def test_pngs_from_before_the_infotext_still_read() -> None:
    parameters = ImageParameters.of(SPEC, 0, None, "old-job")
    info = PngInfo()
    info.add_text("parameters", parameters.model_dump_json())
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=info)
    assert read_parameters(buffer.getvalue()) == parameters
