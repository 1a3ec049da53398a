"""Where a served generation's time goes: ``torch.profiler`` (CPU and CUDA activity) around the
worker's engine.

Per request it reports:

* the wall time, and the stages (``olss.encode``, ``olss.denoise``, ``olss.decode``, ranges the
  worker's ``StageTimer`` opens) and the phases of every denoising step (``olss.unet``,
  ``olss.guidance``, ``olss.scheduler``, from ``workers.guided_step``), each as host time and,
  on a GPU, the device time of the kernels they launched;
* on a GPU, the device's busy time (the union of kernel and copy intervals) against the wall,
  and the host's time split into CUDA launch calls (``cudaLaunchKernel``, ``cudaGraphLaunch``
  ...), waits for the device (synchronisations and blocking copies) and the rest: Python,
  module calls and the dispatcher. A launch-bound loop shows a busy time far below the wall and
  a host time made of launches and Python;
* on a CPU there are no kernels: ``op_self_ms`` is the self time of the ATen ops (their compute,
  plus the dispatch inside them) and ``outside_ops_ms`` the rest of the wall (Python and module
  overhead), the same split measured on the host.

Profiling slows the host down (every op is recorded): compare the shares, not the absolute
numbers, with the timed runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile, record_function

from workers.guided_step import PHASES
from workers.stage_timer import STAGE_RANGE_PREFIX

REQUEST_RANGE = STAGE_RANGE_PREFIX + "request"
STAGES = tuple(STAGE_RANGE_PREFIX + name for name in ("encode", "denoise", "decode"))
TOP_OPS = 12


@dataclass
class RangeTime:
    """A profiler range's time per request: on the host, and on the device (its kernels)."""

    host_ms: float
    device_ms: float
    calls: float


@dataclass
class ProfileReport:
    """What :func:`profile_requests` measured, per request (milliseconds)."""

    device: str
    requests: int
    wall_ms: float
    stages: dict[str, RangeTime]
    phases: dict[str, RangeTime]
    device_busy_ms: float | None = None
    kernels: float | None = None
    launch_ms: float | None = None
    wait_ms: float | None = None
    other_host_ms: float | None = None
    op_self_ms: float | None = None
    outside_ops_ms: float | None = None
    top_ops: list[dict[str, float | str]] = field(default_factory=list)


def profile_requests(
    generate: Callable[[], object], device: torch.device, requests: int = 3
) -> ProfileReport:
    """Profile ``requests`` calls of ``generate`` (warm it up first)."""
    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
    with profile(activities=activities) as prof:
        for _ in range(requests):
            with record_function(REQUEST_RANGE):
                generate()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = list(prof.events())
    per = 1.0 / requests
    host = [e for e in events if e.device_type == DeviceType.CPU]
    wall_ms = sum(e.cpu_time_total for e in host if e.name == REQUEST_RANGE) / 1000 * per
    report = ProfileReport(
        device=str(device),
        requests=requests,
        wall_ms=round(wall_ms, 3),
        stages=_ranges(host, STAGES, per),
        phases=_ranges(host, PHASES, per),
    )
    if device.type == "cuda":
        on_device = [e for e in events if e.device_type == DeviceType.CUDA]
        launch = sum(e.cpu_time_total for e in host if _is_launch(e.name)) / 1000 * per
        wait = sum(e.cpu_time_total for e in host if _is_wait(e.name)) / 1000 * per
        report.device_busy_ms = round(_union_ms(on_device) * per, 3)
        report.kernels = round(len(on_device) * per, 1)
        report.launch_ms = round(launch, 3)
        report.wait_ms = round(wait, 3)
        report.other_host_ms = round(wall_ms - launch - wait, 3)
    else:
        op_self = sum(e.self_cpu_time_total for e in host if e.name.startswith("aten::"))
        report.op_self_ms = round(op_self / 1000 * per, 3)
        report.outside_ops_ms = round(wall_ms - op_self / 1000 * per, 3)
    report.top_ops = _top_ops(prof, per, device.type == "cuda")
    return report


def _ranges(host: list, names: Iterable[str], per: float) -> dict[str, RangeTime]:
    """Host and device time of the ranges called ``names`` (device: kernels launched inside)."""
    wanted = set(names)
    found = {name: RangeTime(0.0, 0.0, 0.0) for name in names}
    for event in host:
        if event.name in wanted:
            time = found[event.name]
            time.host_ms += event.cpu_time_total / 1000 * per
            time.calls += per
        kernel_us = sum(kernel.duration for kernel in getattr(event, "kernels", []))
        if kernel_us:
            for name in _enclosing(event, wanted):
                found[name].device_ms += kernel_us / 1000 * per
    for time in found.values():
        time.host_ms, time.device_ms = round(time.host_ms, 3), round(time.device_ms, 3)
        time.calls = round(time.calls, 2)
    return found


def _enclosing(event, wanted: set[str]) -> set[str]:
    names, parent = set(), event
    while parent is not None:
        if parent.name in wanted:
            names.add(parent.name)
        parent = parent.cpu_parent
    return names


def _is_launch(name: str) -> bool:
    return name.startswith("cu") and "Launch" in name


def _is_wait(name: str) -> bool:
    blocking_copy = name.startswith("cudaMemcpy") and "Async" not in name
    return name.startswith("cu") and ("Synchronize" in name or blocking_copy)


def _union_ms(events: list) -> float:
    """Milliseconds covered by the events' intervals (overlaps counted once)."""
    spans = sorted((e.time_range.start, e.time_range.end) for e in events)
    covered, current_start, current_end = 0.0, None, None
    for start, end in spans:
        if current_end is None or start > current_end:
            if current_end is not None:
                covered += current_end - current_start
            current_start, current_end = start, end
        else:
            current_end = max(current_end, end)
    if current_end is not None:
        covered += current_end - current_start
    return covered / 1000


def _top_ops(prof: profile, per: float, cuda: bool) -> list[dict[str, float | str]]:
    rows = [row for row in prof.key_averages() if row.key.startswith("aten::")]
    key = (lambda r: r.self_device_time_total) if cuda else (lambda r: r.self_cpu_time_total)
    top = sorted(rows, key=key, reverse=True)[:TOP_OPS]
    return [
        {
            "op": row.key,
            "calls": round(row.count * per, 1),
            "self_host_ms": round(row.self_cpu_time_total / 1000 * per, 3),
            "self_device_ms": round(row.self_device_time_total / 1000 * per, 3) if cuda else 0.0,
        }
        for row in top
    ]
