"""The worker's PNG encoder: lossless, valid chunk by chunk, sliced across threads for large
images, its text read back by Pillow, and files as small as Pillow's at levels 0 and 1."""

from __future__ import annotations

import io
import os
import signal
import struct
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from bench.image_encoding import photo_like
from workers.png_encoding import (
    DEFLATE_THREADS,
    SLICE_MIN_BYTES,
    _adler32_combine,
    encode_png,
    image_data,
)

TEXTS = {"parameters": 'a fox, "snow": Steps: 5', "olss-parameters": '{"prompt": "東京の雪 ☃"}'}
"""One Latin-1 text (a ``tEXt`` chunk) and one that is not (``iTXt``)."""


def chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """(type, data) of every chunk, each CRC checked (PNG section 5.3)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    found, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset:offset + 4])
        kind, body = data[offset + 4:offset + 8], data[offset + 8:offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length:offset + 12 + length])
        assert crc == zlib.crc32(kind + body), kind
        found.append((kind, body))
        offset += 12 + length
    return found


@pytest.mark.parametrize(("mode", "shape"), [
    ("RGB", (520, 512, 3)),  # several slices
    ("RGBA", (64, 33, 4)),
    ("L", (900, 301)),
    ("RGB", (1, 1, 3)),
    ("RGB", (300, 1, 3)),
])
@pytest.mark.parametrize("level", [0, 1])
def test_random_pixels_come_back_exactly_with_their_texts(
    mode: str, shape: tuple[int, ...], level: int
) -> None:
    pixels = np.random.default_rng(level).integers(0, 256, shape, dtype=np.uint8)
    data = encode_png(Image.fromarray(pixels, mode), TEXTS, level)
    kinds = [kind for kind, _ in chunks(data)]
    assert kinds == [b"IHDR", b"tEXt", b"iTXt", b"IDAT", b"IEND"]
    with Image.open(io.BytesIO(data)) as image:
        assert image.text == TEXTS  # read on open: the text comes before the image data
        assert image.mode == mode
        assert np.array_equal(np.asarray(image), pixels)


def test_the_slices_join_into_one_zlib_stream_with_the_whole_checksum() -> None:
    pixels = np.asarray(photo_like(512).convert("RGB"))
    height, width, channels = pixels.shape
    assert height * (1 + width * channels) >= 2 * SLICE_MIN_BYTES  # more than one slice
    stream = image_data(pixels, 1)
    filtered = zlib.decompress(stream)  # checks the zlib header and the Adler-32
    assert len(filtered) == height * (1 + width * channels)
    assert filtered[0] == 0 and filtered[1 + width * channels] == 4  # row 0: None; then Paeth


def test_adler32_of_joined_parts_is_the_checksum_of_the_whole() -> None:
    first, second = b"\xff" * 70_000, bytes(range(256)) * 300
    combined = _adler32_combine(zlib.adler32(first), zlib.adler32(second), len(second))
    assert combined == zlib.adler32(first + second)


@pytest.mark.parametrize("level", [0, 1])
def test_files_are_within_two_percent_of_pillows_at_the_fast_levels(level: int) -> None:
    image = photo_like(512)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=level)
    assert len(encode_png(image, {}, level)) <= 1.02 * len(buffer.getvalue())


def test_other_levels_and_modes_go_to_pillow_with_the_same_text() -> None:
    pixels = np.random.default_rng(3).integers(0, 256, (40, 30, 3), dtype=np.uint8)
    for image, level in ((Image.fromarray(pixels), 6), (Image.fromarray(pixels).convert("P"), 1)):
        data = encode_png(image, TEXTS, level)
        with Image.open(io.BytesIO(data)) as back:
            assert back.text == TEXTS
            assert back.convert("RGB").tobytes() == image.convert("RGB").tobytes()
    with pytest.raises(ValueError, match="0 to 9"):
        encode_png(Image.fromarray(pixels), TEXTS, 10)


def test_a_large_image_uses_every_deflate_thread_it_can() -> None:
    rows_for_all = DEFLATE_THREADS * SLICE_MIN_BYTES // (1 + 512 * 3) + 1
    pixels = np.zeros((rows_for_all, 512, 3), dtype=np.uint8)
    stream = image_data(pixels, 1)
    # Each slice ends with a full flush: an empty stored block, 00 00 ff ff (RFC 1951 3.2.4).
    assert stream.count(b"\x00\x00\xff\xff") >= DEFLATE_THREADS
    expected = np.zeros((rows_for_all, 1 + 512 * 3), dtype=np.uint8)
    expected[1:, 0] = 4  # Paeth after row 0; zeros filter to zeros
    assert zlib.decompress(stream) == expected.tobytes()


def test_a_forked_process_deflates_on_threads_of_its_own() -> None:
    pixels = np.zeros((DEFLATE_THREADS * SLICE_MIN_BYTES // (1 + 512 * 3) + 1, 512, 3),
                      dtype=np.uint8)
    image_data(pixels, 1)  # this process's pool exists now
    child = os.fork()
    if child == 0:  # the parent's pool threads did not come along: a new pool must serve
        os._exit(0 if zlib.decompress(image_data(pixels, 1)) else 1)
    deadline = time.monotonic() + 30
    while (done := os.waitpid(child, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
        pytest.fail("the forked process hung on the parent's deflate pool")
    assert os.waitstatus_to_exitcode(done[1]) == 0
