"""The job state machine: statuses and the one table of transitions between them.

Every status change of a job is one row of :data:`TRANSITIONS`. The Lua scripts that make the
guarded changes (:mod:`olss_core.job_scripts`) take their allowed source statuses from this table,
and ``tests/core/test_job_states.py`` drives every transition against a real Redis and checks it
against the table. docs/ARCHITECTURE.md draws it.

::

    (new) --enqueue--> queued --start--> running --succeed--> succeeded
                         |  ^              |  |
                         |  +----retry-----+  +--dead_letter--> failed
                         +--cancel--> canceled <--cancel--+
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def finished(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED})


class Transition(StrEnum):
    ENQUEUE = "enqueue"
    START = "start"
    CANCEL = "cancel"
    SUCCEED = "succeed"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class Rule:
    """One transition: the statuses it may start from, where it ends, who makes it and how."""

    sources: frozenset[JobStatus | None]
    target: JobStatus
    actor: str
    how: str


TRANSITIONS: dict[Transition, Rule] = {
    Transition.ENQUEUE: Rule(
        frozenset({None}), JobStatus.QUEUED, "gateway",
        "Lua ENQUEUE: record, queued event and stream entry in one step (429 when full)",
    ),
    # ``running`` is a source because a job whose worker died is delivered again while its
    # record still says running; each start counts an attempt.
    Transition.START: Rule(
        frozenset({JobStatus.QUEUED, JobStatus.RUNNING}), JobStatus.RUNNING, "worker",
        "Lua START: counts an attempt; a canceled job is finished instead, one out of "
        "attempts is dead-lettered",
    ),
    Transition.CANCEL: Rule(
        frozenset({JobStatus.QUEUED, JobStatus.RUNNING}), JobStatus.CANCELED, "gateway, worker",
        "Lua CANCEL finishes a queued job at once; for a running one it sets the cancel flag "
        "and the worker finishes it at the next step",
    ),
    Transition.SUCCEED: Rule(
        frozenset({JobStatus.RUNNING}), JobStatus.SUCCEEDED, "worker",
        "MULTI: images, record, finished event, notice and XACK for the whole batch",
    ),
    Transition.RETRY: Rule(
        frozenset({JobStatus.RUNNING}), JobStatus.QUEUED, "worker",
        "MULTI: a failed attempt with attempts left goes to the end of the queue",
    ),
    Transition.DEAD_LETTER: Rule(
        frozenset({JobStatus.QUEUED, JobStatus.RUNNING}), JobStatus.FAILED, "worker",
        "MULTI: out of attempts; the entry moves to the dead-letter stream",
    ),
}


def allowed(transition: Transition, status: JobStatus | None) -> bool:
    """Whether ``transition`` may start from ``status`` (``None``: no record yet)."""
    return status in TRANSITIONS[transition].sources
