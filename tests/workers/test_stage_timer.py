"""StageTimer: per-stage seconds, repeated stages summed, total spanning first start to last end."""

from __future__ import annotations

import time

import pytest
import torch

from workers.stage_timer import StageTimer


def test_stages_are_timed_and_total_spans_them_including_the_gaps() -> None:
    timer = StageTimer("cpu")
    with timer.stage("encode"):
        time.sleep(0.01)
    time.sleep(0.02)  # host work between stages: in the total, in no stage
    with timer.stage("decode"):
        time.sleep(0.01)
    durations = timer.durations()
    assert set(durations) == {"encode", "decode", "total"}
    assert durations["encode"] >= 0.01 and durations["decode"] >= 0.01
    assert durations["total"] >= durations["encode"] + durations["decode"] + 0.02


def test_a_repeated_stage_is_summed() -> None:
    timer = StageTimer(torch.device("cpu"))
    for _ in range(3):
        with timer.stage("denoise"):
            time.sleep(0.005)
    assert timer.durations()["denoise"] >= 0.015


def test_no_stage_gives_a_zero_total() -> None:
    assert StageTimer("cpu").durations() == {"total": 0.0}


def test_a_stage_that_raises_is_not_recorded() -> None:
    timer = StageTimer("cpu")
    with pytest.raises(RuntimeError), timer.stage("decode"):
        raise RuntimeError("boom")
    assert "decode" not in timer.durations()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_device_work_without_syncing_inside_a_stage() -> None:
    timer = StageTimer("cuda")
    x = torch.randn(2048, 2048, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with timer.stage("denoise"):
            for _ in range(10):
                x = x @ x
                x = x / x.norm()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    durations = timer.durations()
    assert durations["denoise"] > 0
    assert durations["total"] >= durations["denoise"]
