"""Every Redis key name of the service, in one place.

``{model}`` is a model key, ``{id}`` a job id, ``{wid}`` a worker id.

==============================  ======  =====================================================
key                             type    contents
==============================  ======  =====================================================
``olss:jobs:{model}``           stream  one entry per delivery, field ``job_id``; consumer group
                                        ``olss-workers``; entries are deleted when acknowledged
``olss:queued:{model}``         zset    job ids waiting to start, scored by enqueue time
                                        (queue depth and queue position)
``olss:dead:{model}``           stream  dead-lettered jobs: ``job_id``, ``reason``, ``attempts``
``olss:job:{id}``               hash    the job record (``JobRecord``), TTL ``OLSS_JOB_TTL_S``
``olss:events:{id}``            stream  the job's events (``JobEvent``), TTL as the record
``olss:image:{id}:{n}``         string  image ``n``'s encoded bytes, TTL as the record
``olss:cancel:{id}``            string  set when a cancel was asked for, TTL as the record
``olss:idem:{hash}``            string  job id for an Idempotency-Key, TTL as the record
``olss:models``                 set     model keys that have had a worker (for queue depth)
``olss:workers``                set     worker ids that have sent a heartbeat
``olss:worker:{wid}``           string  the worker's ``WorkerInfo`` JSON, TTL
                                        ``OLSS_HEARTBEAT_TTL_S``: present means alive
``olss:finished``               pubsub  a job id, published when the job reaches a final state
                                        (wakes sync waiters; the record stays the truth)
==============================  ======  =====================================================
"""

from __future__ import annotations

PREFIX = "olss"
GROUP = "olss-workers"
"""The consumer group every worker of a model reads its stream with."""
WORKERS_SET = f"{PREFIX}:workers"
MODELS_SET = f"{PREFIX}:models"
FINISHED_CHANNEL = f"{PREFIX}:finished"
STREAM_JOB_FIELD = "job_id"
"""The one field of a jobs-stream entry."""


def jobs_stream(model: str) -> str:
    return f"{PREFIX}:jobs:{model}"


def queued_zset(model: str) -> str:
    return f"{PREFIX}:queued:{model}"


def dead_stream(model: str) -> str:
    return f"{PREFIX}:dead:{model}"


def job_key(job_id: str) -> str:
    return f"{PREFIX}:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{PREFIX}:events:{job_id}"


def image_key(job_id: str, index: int) -> str:
    return f"{PREFIX}:image:{job_id}:{index}"


def cancel_key(job_id: str) -> str:
    return f"{PREFIX}:cancel:{job_id}"


def idempotency_key(digest: str) -> str:
    return f"{PREFIX}:idem:{digest}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:worker:{worker_id}"
