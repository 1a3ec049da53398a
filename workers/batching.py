"""Which queued jobs may share one pipeline call, and how a failed batch is split.

Jobs are compatible when they agree on everything the denoising loop shares: model, image size,
step count, scheduler and guidance scale. Prompts, negative prompts and seeds may differ: each
image has its own text embedding and its own seeded generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from olss_core.protocol import JobSpec


class HasSpec(Protocol):
    @property
    def spec(self) -> JobSpec: ...


T = TypeVar("T", bound=HasSpec)


@dataclass(frozen=True)
class BatchKey:
    """What must be equal for two jobs to run in one batch."""

    model: str
    width: int
    height: int
    steps: int
    scheduler: str
    guidance_scale: float

    @classmethod
    def of(cls, spec: JobSpec) -> BatchKey:
        return cls(
            spec.model, spec.width, spec.height, spec.steps, spec.scheduler, spec.guidance_scale
        )


def plan_batches(jobs: Sequence[T], max_images: int) -> list[list[T]]:
    """Group compatible jobs in arrival order into batches of at most ``max_images`` images.

    A job with more images than ``max_images`` runs alone. Batches come out in the order of
    their first job.
    """
    open_batches: dict[BatchKey, list[T]] = {}
    done: list[list[T]] = []
    for job in jobs:
        key = BatchKey.of(job.spec)
        batch = open_batches.get(key)
        if batch is not None and images(batch) + job.spec.num_images > max_images:
            done.append(batch)
            batch = None
        if batch is None:
            batch = open_batches[key] = []
        batch.append(job)
    done.extend(open_batches.values())
    order = {id(job): n for n, job in enumerate(jobs)}
    return sorted(done, key=lambda batch: order[id(batch[0])])


def images(batch: Sequence[HasSpec]) -> int:
    """Images a batch makes."""
    return sum(job.spec.num_images for job in batch)


def halves(batch: Sequence[T]) -> tuple[list[T], list[T]]:
    """Split a failed batch in two (the first half gets the extra job)."""
    middle = (len(batch) + 1) // 2
    return list(batch[:middle]), list(batch[middle:])
