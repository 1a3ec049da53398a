"""How much device memory the worker's tensors hold, for ``olss_device_memory_used_bytes``."""

from __future__ import annotations

import torch


def memory_used(device: torch.device) -> float:
    """Bytes allocated by tensors on ``device`` (``torch.cuda.memory_allocated``); 0 on a CPU,
    where torch keeps no such count."""
    if device.type != "cuda":
        return 0.0
    return float(torch.cuda.memory_allocated(device))
