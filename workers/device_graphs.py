"""CUDA graphs of fixed computations on static buffers, with a CPU fallback that runs the same code.

A CUDA graph records the kernels of one call once and replays them with one launch, which takes
the host's per-kernel launch and Python overhead out of every later call (PyTorch's
``torch.cuda.graph``; NVIDIA, "CUDA Graphs", CUDA C++ Programming Guide). A replay reads and
writes the exact memory of the capture, so every input lives in a static buffer the caller copies
into, and the output is the tensor the capture produced.

:class:`CapturedStage` is one call on static inputs (the text encoder, the VAE decoder);
:class:`CapturedLoop` is a fixed k-step denoising run as a chain of graph segments (one per step,
or one for the whole loop) with the step hook between segments. On a device other than CUDA
nothing is captured: each call runs the same function on the same static buffers, so CPU tests
exercise the code a GPU replays.

All graphs of one engine share a memory pool. That is safe because they run one at a time on one
stream and each caller copies a graph's output before the next graph runs (a later capture may
reuse an earlier graph's freed intermediates for its own live output, and the earlier graph's
next replay overwrites them).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from workers.engine import BatchInterrupted, StepHook
from workers.guided_step import GuidedStep, run_steps


class GraphCall:
    """``fn()`` (it reads static buffers and returns a tensor), replayed once captured."""

    def __init__(self, fn: Callable[[], torch.Tensor]) -> None:
        self._fn = fn
        self._graph: torch.cuda.CUDAGraph | None = None
        self.output: torch.Tensor | None = None

    @property
    def captured(self) -> bool:
        return self._graph is not None

    def capture(self, pool: Any, stream: torch.cuda.Stream) -> None:
        """Record ``fn`` as a CUDA graph on ``stream``; its output becomes the static ``output``.

        A capture records only the kernels launched on its stream. ``torch.cuda.graph``'s own
        stream belongs to the thread's current device, which is ``cuda:0`` unless set, so the
        stream here is one on the tensors' device (:func:`capture_stream`): on ``cuda:1`` the
        default would capture an empty graph whose replays leave the capture-time outputs. The
        thread's current stream is restored even when a capture fails (``torch.cuda.graph``
        leaves its stream current when ending the capture raises).
        """
        graph = torch.cuda.CUDAGraph()
        previous = torch.cuda.current_stream(stream.device)
        try:
            with torch.cuda.device(stream.device), torch.cuda.graph(
                graph, pool=pool, stream=stream
            ):
                self.output = self._fn()
        finally:
            torch.cuda.set_stream(previous)
        self._graph = graph

    def run(self) -> torch.Tensor:
        """Replay the graph, or (not captured) call ``fn``; the output."""
        if self._graph is not None:
            self._graph.replay()
        else:
            self.output = self._fn()
        assert self.output is not None
        return self.output


_CAPTURE_STREAMS: dict[torch.device, torch.cuda.Stream] = {}


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The one stream every graph on ``device`` is captured on.

    Graphs share a memory pool only when they are captured on the same stream: the caching
    allocator hands a freed pool block back to the stream that freed it (``torch.cuda.graph``:
    a pool used by a capture on an explicit stream wants that same stream).
    """
    device = torch.device("cuda", torch.cuda.current_device() if device.index is None
                          else device.index)
    if device not in _CAPTURE_STREAMS:
        _CAPTURE_STREAMS[device] = torch.cuda.Stream(device)
    return _CAPTURE_STREAMS[device]


def warm_up_then_capture(
    device: torch.device, calls: Sequence[GraphCall], pool: Any, before: Callable[[], None]
) -> None:
    """Run ``calls`` once in order on a side stream (lazy initialisation, cuDNN autotuning and
    ``torch.compile`` happen outside the graph), then capture them in the same order;
    ``before()`` runs before each pass (it resets a scheduler's run state)."""
    side = capture_stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        before()
        for call in calls:
            call.run()
    torch.cuda.current_stream(device).wait_stream(side)
    torch.cuda.synchronize(device)
    before()
    for call in calls:
        call.capture(pool, side)


class CapturedStage:
    """``fn(*inputs)`` on static copies of ``example_inputs``: call it with same-shaped values."""

    def __init__(
        self,
        fn: Callable[..., torch.Tensor],
        example_inputs: Sequence[torch.Tensor],
        device: torch.device,
        pool: Any,
    ) -> None:
        self.inputs = [example.clone() for example in example_inputs]
        self._call = GraphCall(lambda: fn(*self.inputs))
        if device.type == "cuda":
            warm_up_then_capture(device, [self._call], pool, before=lambda: None)

    def __call__(self, *values: torch.Tensor) -> torch.Tensor:
        for buffer, value in zip(self.inputs, values, strict=True):
            buffer.copy_(value)
        return self._call.run()


class CapturedLoop:
    """A k-step guided run of ``step`` over static latents and embeddings, as graph segments.

    ``segments`` partition the step indices: one range per step keeps the step hook after every
    step, one range for all k makes the whole loop one graph (the hook then runs once, at the
    end). A segment's hook runs once the next segment is launched, so the device is not left
    waiting for the hook's Redis round trips. The scheduler must be private to the loop and need
    no host work per step (an ``OLSSScheduler``: a fixed linear recipe, coefficients uploaded by
    ``set_timesteps``).
    """

    def __init__(
        self,
        step: GuidedStep,
        latents: torch.Tensor,
        embeds: torch.Tensor,
        segments: Sequence[range],
        device: torch.device,
        pool: Any,
    ) -> None:
        self.step = step
        self.latents = latents.clone()
        self.embeds = embeds.clone()
        self.segments = list(segments)
        self.num_steps = self.segments[-1].stop
        self._device = device
        self._calls: list[GraphCall] = []
        for steps in self.segments:
            source = self._source(len(self._calls))
            self._calls.append(
                GraphCall(lambda steps=steps, source=source: run_steps(
                    step, source(), self.embeds, steps
                ))
            )
        if device.type == "cuda":
            warm_up_then_capture(device, self._calls, pool, before=self._reset)

    def _source(self, index: int) -> Callable[[], torch.Tensor]:
        """Where segment ``index`` reads its latents: the static input or the last output."""
        if index == 0:
            return lambda: self.latents
        previous = self._calls[index - 1]
        return lambda: previous.output  # type: ignore[return-value]

    def _reset(self) -> None:
        self.step.scheduler.set_timesteps(self.num_steps, device=self._device)

    def run(
        self, latents: torch.Tensor, embeds: torch.Tensor, on_step: StepHook | None = None
    ) -> torch.Tensor:
        """The final latents for ``latents`` (already scaled by ``init_noise_sigma``) and
        ``embeds``; ``on_step(done, k)`` after each segment may stop the run."""
        self.latents.copy_(latents)
        self.embeds.copy_(embeds)
        if not self._calls[0].captured:
            self._reset()
        done: int | None = None
        previous: torch.Tensor | None = None
        for steps, call in zip(self.segments, self._calls, strict=True):
            call.run()
            if done is not None:
                self._report(on_step, done, previous)
            done, previous = steps.stop, call.output
        self._report(on_step, self.num_steps, previous)
        output = self._calls[-1].output
        assert output is not None
        return output

    def _report(self, on_step: StepHook | None, done: int, latents: torch.Tensor | None
                ) -> None:
        if on_step is not None and not on_step(done, self.num_steps, latents):
            raise BatchInterrupted
