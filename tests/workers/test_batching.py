"""Compatible jobs share a batch, bounded in images; a failed batch splits in halves."""

from __future__ import annotations

from dataclasses import dataclass

from olss_core.protocol import JobSpec
from workers.batching import halves, images, plan_batches


@dataclass(frozen=True)
class Job:
    name: str
    spec: JobSpec


def job(name: str, **changes: object) -> Job:
    base = {
        "model": "m",
        "prompt": name,
        "width": 32,
        "height": 32,
        "steps": 5,
        "guidance_scale": 7.5,
        "seed": 0,
    }
    return Job(name, JobSpec(**{**base, **changes}))


def names(batches: list[list[Job]]) -> list[list[str]]:
    return [[j.name for j in batch] for batch in batches]


def test_compatible_jobs_share_a_batch_whatever_their_prompts_and_seeds() -> None:
    jobs = [job("a", seed=1, negative_prompt="blur"), job("b", seed=2), job("c", seed=3)]
    assert names(plan_batches(jobs, max_images=8)) == [["a", "b", "c"]]


def test_size_steps_scheduler_and_guidance_separate_batches() -> None:
    jobs = [
        job("a"),
        job("w", width=64),
        job("s", steps=4),
        job("d", scheduler="ddim"),
        job("g", guidance_scale=3.0),
        job("b"),
    ]
    assert names(plan_batches(jobs, max_images=8)) == [["a", "b"], ["w"], ["s"], ["d"], ["g"]]


def test_batches_hold_at_most_max_images_and_a_big_job_runs_alone() -> None:
    jobs = [job("a", num_images=3), job("b", num_images=2), job("c"), job("big", num_images=9)]
    batches = plan_batches(jobs, max_images=4)
    assert names(batches) == [["a"], ["b", "c"], ["big"]]
    assert [images(b) for b in batches] == [3, 3, 9]


def test_halves_split_down_to_single_jobs() -> None:
    first, second = halves([job("a"), job("b"), job("c")])
    assert ([j.name for j in first], [j.name for j in second]) == (["a", "b"], ["c"])
    assert halves([job("a")])[1] == []
