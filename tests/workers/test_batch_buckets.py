"""BatchBuckets: the default sizes, the size a batch is padded to, the decoder's chunks, and
padding rows that repeat the last one."""

from __future__ import annotations

import pytest
import torch

from workers.batch_buckets import BatchBuckets, pad_rows


def test_the_default_buckets_are_powers_of_two_and_the_largest_batch() -> None:
    assert BatchBuckets.up_to(8).sizes == (1, 2, 4, 8)
    assert BatchBuckets.up_to(6).sizes == (1, 2, 4, 6)
    assert BatchBuckets.up_to(1).sizes == (1,)
    assert BatchBuckets.up_to(8, [3, 16]).sizes == (3, 8)  # capped, and the largest added


def test_a_batch_is_padded_to_the_next_bucket_or_runs_at_its_own_size_above_them() -> None:
    buckets = BatchBuckets((1, 2, 4, 8))
    assert [buckets.padded(n) for n in range(1, 10)] == [1, 2, 4, 4, 8, 8, 8, 8, 9]


def test_the_decoder_runs_real_rows_in_bucket_chunks() -> None:
    buckets = BatchBuckets((1, 2, 4, 8))
    assert buckets.chunks(7) == [4, 2, 1]
    assert buckets.chunks(8) == [8]
    assert buckets.chunks(12) == [8, 4]
    assert BatchBuckets((2, 4)).chunks(3) == [2, 2]  # no bucket of 1: the last chunk is padded


def test_bad_buckets_are_rejected() -> None:
    with pytest.raises(ValueError, match="positive"):
        BatchBuckets((0, 2))
    with pytest.raises(ValueError, match="sorted"):
        BatchBuckets((4, 2))


def test_padding_repeats_the_last_row() -> None:
    rows = torch.arange(6.0).reshape(3, 2)
    padded = pad_rows(rows, 5)
    assert padded.tolist() == [[0, 1], [2, 3], [4, 5], [4, 5], [4, 5]]
    assert pad_rows(rows, 3) is rows
