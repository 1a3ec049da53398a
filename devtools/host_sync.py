"""Find host-device synchronisations in a block of PyTorch code, e.g. one denoising step.

A CUDA stream runs ahead of the Python thread only while Python never waits for a result. The
code that makes it wait: reading a tensor's value on the host (``.item()``, ``float(t)``,
``bool(t)``, ``.tolist()``, ``.numpy()``, indexing with a tensor), ops whose output shape depends
on the data (``nonzero``, boolean masks, ``unique``), and copies between host and device
(``.cpu()``, ``.to(device)``, ``torch.tensor(data, device=...)``: a pageable upload synchronises
the stream too).

:func:`detect_host_syncs` records all of these with two PyTorch hooks: a ``TorchFunctionMode``
sees the Python-level calls (``tolist``, ``numpy``, factories from host data) and a
``TorchDispatchMode`` sees the ATen ops, including scalar reads made inside C++. On CUDA it also
turns on ``torch.cuda.set_sync_debug_mode("warn")`` and records every synchronisation the CUDA
runtime reports, so that run is the ground truth. Elsewhere the hooks stand in for it:

* ``device`` is ``meta``: tensors hold no data, so this is a faithful stand-in for a GPU run
  on a machine without one: the hooks flag every value read of a meta tensor and every copy
  between the host and the meta "device" (the upload a real device would do). A scalar read or
  ``nonzero`` on a meta tensor is answered with a placeholder (0, ``False``, one index row), so
  the block runs to its end and every point is counted; its numbers mean nothing.
* ``device`` is ``cpu``: host and device are one, so copies cannot be seen; scalar reads and
  data-dependent ops are flagged wherever the tensor lives, which over-counts reads of tables a
  GPU run would also keep on the host.
"""

from __future__ import annotations

import traceback
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_aten = torch.ops.aten

# ATen ops that read a value on the host or size their output from the data.
_DATA_DEPENDENT_OPS = {
    _aten._local_scalar_dense.default,
    _aten.nonzero.default,
    _aten.masked_select.default,
    _aten._unique2.default,
    _aten.unique_consecutive.default,
    _aten.unique_dim.default,
    _aten.repeat_interleave.Tensor,
    _aten.equal.default,
}
_COPY_OPS = {_aten._to_copy.default, _aten.copy_.default}

# Tensor methods that hand the host a tensor's data without an ATen op the dispatch hook sees
# (``item``, ``bool(t)`` and the like reach it as ``_local_scalar_dense``).
_HOST_READ_METHODS = {torch.Tensor.tolist, torch.Tensor.numpy}
_HOST_DATA_FACTORIES = {torch.tensor, torch.as_tensor}


@dataclass(frozen=True)
class HostSync:
    """One synchronisation point.

    Args:
        op: what forced it (an ATen op, a tensor method, or ``"cuda runtime sync"``).
        where: the innermost caller outside torch, or the CUDA runtime's message.
        source: ``"hooks"`` (found by the function/dispatch hooks) or ``"cuda"`` (reported by
            the CUDA runtime under ``set_sync_debug_mode``: the ground truth on a GPU).
    """

    op: str
    where: str
    source: str = "hooks"


def _caller() -> str:
    """``file:line function`` of the innermost frame that is not in torch or this module."""
    for frame in reversed(traceback.extract_stack()[:-2]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" in path or path.endswith("/devtools/host_sync.py"):
            continue
        short = "/".join(path.split("/")[-2:])
        return f"{short}:{frame.lineno} {frame.name}"
    return "<unknown>"


def _tensors(args: Any, kwargs: Any) -> list[torch.Tensor]:
    flat = [*args, *(kwargs or {}).values()]
    out: list[torch.Tensor] = []
    for item in flat:
        if isinstance(item, torch.Tensor):
            out.append(item)
        elif isinstance(item, (list, tuple)):
            out.extend(t for t in item if isinstance(t, torch.Tensor))
    return out


class _Recorder:
    """Shared state of the two modes: which device counts as "the device" and what was found."""

    def __init__(self, device: torch.device) -> None:
        self.device_type = device.type
        self.found: list[HostSync] = []

    def on_device(self, tensor: torch.Tensor) -> bool:
        # On CPU, host and device are the same memory: every tensor counts as device-resident.
        return self.device_type == "cpu" or tensor.device.type == self.device_type

    def add(self, op: str) -> None:
        self.found.append(HostSync(op=op, where=_caller()))


class _FunctionHook(TorchFunctionMode):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in _HOST_READ_METHODS and args and self.recorder.on_device(args[0]):
            self.recorder.add(f"Tensor.{func.__name__}")
        elif func in _HOST_DATA_FACTORIES:
            target = kwargs.get("device")
            uploads = target is not None and self.recorder.device_type != "cpu"
            if uploads and torch.device(target).type == self.recorder.device_type:
                self.recorder.add(f"torch.{func.__name__}(host data, device={target})")
        return func(*args, **kwargs)


class _DispatchHook(TorchDispatchMode):
    def __init__(self, recorder: _Recorder) -> None:
        super().__init__()
        self.recorder = recorder

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        tensors = _tensors(args, kwargs)
        if func in _DATA_DEPENDENT_OPS and any(self.recorder.on_device(t) for t in tensors):
            self.recorder.add(str(func))
            if self.recorder.device_type == "meta":
                return _meta_placeholder(func, tensors[0])
        elif func in _COPY_OPS:
            result = func(*args, **(kwargs or {}))
            devices = {t.device.type for t in [*tensors, result] if isinstance(t, torch.Tensor)}
            if "cpu" in devices and self.recorder.device_type in devices - {"cpu"}:
                self.recorder.add(f"{func} between cpu and {self.recorder.device_type}")
            return result
        return func(*args, **(kwargs or {}))


def _meta_placeholder(func: Any, tensor: torch.Tensor) -> Any:
    """A stand-in result for a value read on a meta tensor, so the checked block runs on.

    Scalar reads give 0 (or ``False``); ``nonzero`` gives one index row. Other data-dependent
    ops run as they are and raise.
    """
    if func is _aten._local_scalar_dense.default:
        if tensor.dtype == torch.bool:
            return False
        return 0 if not tensor.dtype.is_floating_point else 0.0
    if func is _aten.nonzero.default:
        return torch.zeros((1, tensor.dim()), dtype=torch.long, device=tensor.device)
    return func(tensor)


@contextmanager
def detect_host_syncs(device: torch.device | str) -> Iterator[list[HostSync]]:
    """Record the host-device synchronisations of the enclosed code on ``device``.

    Yields a list that is filled as the block runs; an empty list afterwards means none was
    found. Code under the hooks runs slower: use it in checks, never around timed code.
    """
    recorder = _Recorder(torch.device(device))
    with ExitStack() as stack:
        if recorder.device_type == "cuda":
            caught = stack.enter_context(warnings.catch_warnings(record=True))
            warnings.simplefilter("always")
            previous = torch.cuda.get_sync_debug_mode()
            torch.cuda.set_sync_debug_mode("warn")
            stack.callback(torch.cuda.set_sync_debug_mode, previous)
        stack.enter_context(_FunctionHook(recorder))
        stack.enter_context(_DispatchHook(recorder))
        yield recorder.found
    if recorder.device_type == "cuda":
        for warning in caught:
            if "synchroniz" in str(warning.message).lower():
                recorder.found.append(
                    HostSync(op="cuda runtime sync", where=str(warning.message), source="cuda")
                )
