"""PNG encoding for generated images: the Paeth filter on every row, deflated in slices on threads.

Pillow's PNG encoder deflates the whole image on one thread, after choosing a filter for every
row by trying all five (libpng's heuristic). Here numpy applies the Paeth filter to the whole
image at once, and the filtered rows are cut into slices that deflate on a thread pool (zlib
releases the GIL while it compresses), so a large image is encoded on several cores. At zlib
levels 0 and 1 (``OLSS_PNG_COMPRESS_LEVEL``'s speed end) the Paeth filter alone gives files
within about 1% of Pillow's choice; at higher levels that choice pays (files 3% to 12% smaller
at level 6), so those levels stay with Pillow (docs/BENCHMARKS.md, "PNG encoding"). The pixels
are the same at every level: PNG is lossless.

Format facts used (PNG, W3C 3rd edition; zlib, RFC 1950; deflate, RFC 1951):

- Filter type 4, Paeth (PNG section 9.4): ``Filt(x) = Orig(x) - PaethPredictor(a, b, c)``, with
  ``a`` the byte one pixel to the left, ``b`` the byte above and ``c`` the byte above-left (0
  outside the image). The predictor is the one of ``a``, ``b`` and ``c`` closest to
  ``p = a + b - c``, with ties taken in that order. Row 0 uses filter type 0 (None).
- Each slice is a raw deflate stream ended by a full flush: byte-aligned, with no final block and
  no back-references into it. So the slices concatenate into one stream, which an empty final
  fixed-Huffman block (bytes ``03 00``) closes (RFC 1951 sections 3.2.3 and 3.2.6). A zlib
  header and the Adler-32 of all the filtered data wrap it (RFC 1950).
- Text goes in ``tEXt`` chunks when it is Latin-1, otherwise in uncompressed ``iTXt`` chunks
  (UTF-8), as Pillow's ``PngInfo.add_text`` writes them. Both come before the image data, so a
  reader sees them on open.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from itertools import pairwise

import numpy as np
from PIL import Image
from PIL.PngImagePlugin import PngInfo

SIGNATURE = b"\x89PNG\r\n\x1a\n"
COLOR_TYPES = {"L": 0, "RGB": 2, "RGBA": 6}
"""PNG colour type of each Pillow mode written here (8 bits per sample); others go to Pillow."""
SLICED_LEVELS = (0, 1)
"""zlib levels written here; Pillow writes the others (see the module docstring)."""
FILTER_NONE = 0
FILTER_PAETH = 4
ZLIB_HEADER = b"\x78\x01"  # deflate, 32 KiB window, no preset dictionary; FCHECK makes it % 31
FINAL_EMPTY_BLOCK = b"\x03\x00"
SLICE_MIN_BYTES = 128 * 1024
"""Smallest slice worth a thread of its own: below it, the handover costs more than it saves."""
DEFLATE_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1)
"""Threads that deflate one image's slices: the CPUs this process may run on, at most 8 (the
pool is made on first use)."""


@cache
def _pool() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(max_workers=DEFLATE_THREADS, thread_name_prefix="png-deflate")


os.register_at_fork(after_in_child=_pool.cache_clear)  # a fork has none of the parent's threads


def paeth_rows(pixels: np.ndarray, first: int, stop: int) -> np.ndarray:
    """Rows ``first`` to ``stop`` of the filtered image data of ``pixels`` (H x W x C uint8),
    each with its filter-type byte in front: Paeth, or None for row 0."""
    height, width, channels = pixels.shape
    rows = pixels.reshape(height, width * channels)
    out = np.empty((stop - first, 1 + width * channels), dtype=np.uint8)
    out[:, 0] = FILTER_PAETH
    start = first
    if first == 0:
        out[0, 0] = FILTER_NONE
        out[0, 1:] = rows[0]
        start = 1
    if start < stop:
        current = rows[start:stop]
        above = rows[start - 1:stop - 1]
        body = out[start - first:, 1:]
        # The first pixel has no left neighbour: its predictor is the byte above.
        np.subtract(current[:, :channels], above[:, :channels], out=body[:, :channels],
                    dtype=np.uint8)
        left = current[:, :-channels].astype(np.int16)
        up = above[:, channels:].astype(np.int16)
        up_left = above[:, :-channels].astype(np.int16)
        to_left = up - up_left  # p - a
        to_up = left - up_left  # p - b
        pa, pb, pc = np.abs(to_left), np.abs(to_up), np.abs(to_left + to_up)
        predictor = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
        np.subtract(current[:, channels:], predictor, out=body[:, channels:], dtype=np.uint8,
                    casting="unsafe")
    return out


def _deflate_slice(pixels: np.ndarray, first: int, stop: int, level: int) -> tuple[bytes, int]:
    """The slice's raw deflate stream (full-flushed) and the Adler-32 of its filtered bytes."""
    data = paeth_rows(pixels, first, stop).data
    compressor = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    stream = compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)
    return stream, zlib.adler32(data)


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings joined, from each one's checksum (RFC 1950 section
    8.2: s1 sums the bytes plus 1, s2 sums the running s1, both modulo 65521)."""
    base = 65521
    s1_a, s2_a = first & 0xFFFF, first >> 16
    s1_b, s2_b = second & 0xFFFF, second >> 16
    s1 = (s1_a + s1_b - 1) % base
    s2 = (s2_a + s2_b + second_length * (s1_a - 1)) % base
    return (s2 << 16) | s1


def image_data(pixels: np.ndarray, level: int) -> bytes:
    """The zlib stream of a PNG's ``IDAT``: the Paeth-filtered rows, deflated at ``level``."""
    height, width, channels = pixels.shape
    row_bytes = 1 + width * channels
    slices = max(1, min(DEFLATE_THREADS, height * row_bytes // SLICE_MIN_BYTES, height))
    bounds = [round(height * n / slices) for n in range(slices + 1)]
    parts = list(pairwise(bounds))
    if slices == 1:
        results = [_deflate_slice(pixels, 0, height, level)]
    else:
        results = list(_pool().map(lambda part: _deflate_slice(pixels, *part, level), parts))
    checksum = 1  # Adler-32 of no bytes
    for (first, stop), (_, part_checksum) in zip(parts, results, strict=True):
        checksum = _adler32_combine(checksum, part_checksum, (stop - first) * row_bytes)
    streams = b"".join(stream for stream, _ in results)
    return ZLIB_HEADER + streams + FINAL_EMPTY_BLOCK + struct.pack(">I", checksum)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind))))


def _text_chunk(key: str, value: str) -> bytes:
    keyword = key.encode("latin-1")
    try:
        return _chunk(b"tEXt", keyword + b"\0" + value.encode("latin-1"))
    except UnicodeEncodeError:  # flag 0 (uncompressed), method 0, no language or translation
        return _chunk(b"iTXt", keyword + b"\0\0\0\0\0" + value.encode("utf-8"))


def encode_png(image: Image.Image, texts: Mapping[str, str], level: int) -> bytes:
    """``image`` as PNG bytes with ``texts`` as text chunks, deflated at zlib ``level`` (0-9).

    L, RGB and RGBA images at levels 0 and 1 are encoded here (see the module docstring); any
    other goes to Pillow's encoder, with the same text.
    """
    if not 0 <= level <= 9:
        raise ValueError(f"zlib level must be 0 to 9, not {level}")
    color_type = COLOR_TYPES.get(image.mode)
    if color_type is None or level not in SLICED_LEVELS:
        info = PngInfo()
        for key, value in texts.items():
            info.add_text(key, value)
        buffer = io.BytesIO()
        image.save(buffer, format="PNG", pnginfo=info, compress_level=level)
        return buffer.getvalue()
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, None]
    header = struct.pack(">IIBBBBB", image.width, image.height, 8, color_type, 0, 0, 0)
    return b"".join([
        SIGNATURE,
        _chunk(b"IHDR", header),
        *(_text_chunk(key, value) for key, value in texts.items()),
        _chunk(b"IDAT", image_data(pixels, level)),
        _chunk(b"IEND", b""),
    ])
