"""The batch sizes a compiled or graphed worker runs: a batch is padded up to the next one.

``torch.compile`` with static shapes and CUDA graphs both fix the batch size, so each size a
worker runs costs a compile and a capture in warm-up. Padding a batch to the next of a few sizes
(vLLM pads its CUDA-graph batches the same way) bounds that to a handful. Padding rows repeat the
last real row, whose result is dropped; every image still depends only on its own seed, since
nothing in the UNet or the VAE mixes the rows of a batch. The decoder needs no padding: it runs
the real rows in chunks of these sizes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class BatchBuckets:
    """Sorted, distinct image counts; a batch above the largest runs at its own size."""

    sizes: tuple[int, ...]

    def __post_init__(self) -> None:
        if not self.sizes or any(size < 1 for size in self.sizes):
            raise ValueError(f"batch buckets must be positive image counts, got {self.sizes}")
        if tuple(sorted(set(self.sizes))) != self.sizes:
            raise ValueError(f"batch buckets must be sorted and distinct, got {self.sizes}")

    @classmethod
    def up_to(cls, max_batch: int, sizes: list[int] | None = None) -> BatchBuckets:
        """``sizes`` (capped at ``max_batch``, which is always one), or by default the powers of
        two below ``max_batch`` and ``max_batch`` itself."""
        chosen = sizes or [2**p for p in range(max_batch.bit_length()) if 2**p < max_batch]
        return cls(tuple(sorted({size for size in chosen if size < max_batch} | {max_batch})))

    def padded(self, rows: int) -> int:
        """The bucket a batch of ``rows`` images runs at."""
        return next((size for size in self.sizes if size >= rows), rows)

    def chunks(self, rows: int) -> list[int]:
        """``rows`` split into bucket sizes, largest first; the last chunk may be padded."""
        parts: list[int] = []
        left = rows
        while left > 0:
            fitting = [size for size in self.sizes if size <= left]
            part = fitting[-1] if fitting else self.padded(left)
            parts.append(part)
            left -= part
        return parts


def pad_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """``tensor`` with its last row repeated up to ``rows`` rows (itself when it has them)."""
    missing = rows - tensor.shape[0]
    if missing <= 0:
        return tensor
    return torch.cat([tensor, tensor[-1:].expand(missing, *tensor.shape[1:])])
