"""detect_host_syncs flags value reads, data-dependent shapes and host<->device copies."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import pytest
import torch
from diffusers import DDIMScheduler

from devtools.host_sync import detect_host_syncs
from devtools.sd_configs import SD_NOISE_SCHEDULE

DEVICES = ["cpu", "meta"]


@pytest.mark.parametrize("device", DEVICES)
def test_pure_tensor_math_is_clean(device: str) -> None:
    x = torch.randn(4, 4).to(device)
    with detect_host_syncs(device) as found:
        y = torch.tanh(x @ x) * 2 + x.mean()
        _ = torch.where(y > 0, y, torch.zeros_like(y))
    assert found == []


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "read",
    [
        lambda x: x[0, 0].item(),
        lambda x: float(x.sum()),
        lambda x: bool(x.max() > 0),
        lambda x: x.tolist(),
        lambda x: (x > 0).nonzero(),
    ],
    ids=["item", "float", "bool", "tolist", "nonzero"],
)
def test_value_reads_and_data_dependent_ops_are_flagged(
    device: str, read: Callable[[torch.Tensor], object]
) -> None:
    x = torch.randn(4, 4).to(device)
    # A meta tensor cannot hand over data; the hook has recorded the attempt first.
    with detect_host_syncs(device) as found, contextlib.suppress(RuntimeError, NotImplementedError):
        read(x)
    assert len(found) >= 1
    assert all("test_host_sync.py" in sync.where for sync in found)


def test_uploads_to_the_device_are_flagged_on_meta() -> None:
    host = torch.randn(3)
    with detect_host_syncs("meta") as found:
        host.to("meta")
        torch.tensor([1.0, 2.0], device="meta")
    assert [s.op for s in found] == [
        "aten._to_copy.default between cpu and meta",
        "torch.tensor(host data, device=meta)",
    ]


def test_a_scheduler_that_reads_device_timesteps_is_caught() -> None:
    """DDIM indexes its host-side alpha table with the device timestep: a sync every step."""
    scheduler = DDIMScheduler(**SD_NOISE_SCHEDULE)
    scheduler.set_timesteps(3, device="meta")
    x = torch.empty(1, 4, 8, 8, device="meta")
    per_step = []
    for t in scheduler.timesteps:
        with detect_host_syncs("meta") as found:
            x = scheduler.step(torch.empty_like(x), t, x).prev_sample
        per_step.append(len(found))
    assert all(count >= 1 for count in per_step)
