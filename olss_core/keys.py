"""Every Redis key name of the service, in one place; every key is Redis Cluster safe.

A Lua script or MULTI must touch keys of one hash slot, so keys carry a hash tag (``{...}``):
the per-model and per-job keys carry their model's tag (``model_tag``: a short digest of the
model key), and a job id starts with its model's tag, so a job's keys follow from its id alone.
The fleet's keys share the tag ``{fleet}``. ``{t}`` below is a model tag, ``{id}`` a job id
(``t-<32 hex>``), ``{wid}`` a worker id.

==============================  ======  =====================================================
key                             type    contents
==============================  ======  =====================================================
``olss:{t}:jobs``               stream  one entry per delivery, field ``job_id`` (a new job's
                                        entry also carries a copy of its record's fields);
                                        consumer group ``olss-workers``; entries are deleted
                                        when acknowledged
``olss:{t}:queued``             zset    job ids waiting to start, scored by enqueue time
                                        (queue depth and queue position)
``olss:{t}:dead``               stream  dead-lettered jobs: ``job_id``, ``reason``, ``attempts``
``olss:{t}:job:{id}``           hash    the job record (``JobRecord``), TTL ``OLSS_JOB_TTL_S``
``olss:{t}:events:{id}``        stream  the job's events (``JobEvent``), TTL as the record
``olss:{t}:image:{id}:{n}``     string  image ``n``'s encoded bytes, TTL ``OLSS_IMAGE_TTL_S``,
                                        cut to ``OLSS_DELIVERED_IMAGE_TTL_S`` once delivered
``olss:{t}:cancel:{id}``        string  set when a cancel was asked for, TTL as the record
``olss:{t}:idem:{hash}``        string  ``<job id> <request fingerprint>`` for an
                                        Idempotency-Key, TTL as the record
``olss:{t}:caller:{owner}``     zset    the jobs of one API key (``anonymous`` without auth),
                                        scored by enqueue time (A1111's progress, interrupt)
``olss:{t}:webhooks``           stream  one entry per job with a webhook, field ``job_id``;
                                        consumer group ``olss-webhooks`` (the gateways'
                                        dispatchers); deleted once the job's last event is sent
``olss:{t}:webhook:{id}``       hash    delivery progress of the job's webhook: the last event
                                        handled, attempts at the next one; TTL as the record
``olss:{t}:calibrating:{ih}``   string  ``<worker id> <token>`` of the worker calibrating the
                                        model of identity digest ``ih``; TTL
                                        ``OLSS_CALIBRATE_LOCK_TTL_S``, renewed while it works
``olss:{fleet}:models``         set     model keys that have had a worker (for queue depth)
``olss:{fleet}:last-ready``     hash    model key -> the ``WorkerInfo`` JSON of its last ready
                                        heartbeat, no TTL: what the gateway validates a
                                        sleeping model's jobs against
                                        (``OLSS_ACCEPT_SLEEPING_MODELS``)
``olss:{fleet}:workers``        set     worker ids that have sent a heartbeat
``olss:{fleet}:worker:{wid}``   string  the worker's ``WorkerInfo`` JSON, TTL
                                        ``OLSS_HEARTBEAT_TTL_S``: present means alive
``olss:finished``               pubsub  job ids separated by spaces, published when those jobs
                                        reach a final state (wakes sync waiters; the record
                                        stays the truth)
==============================  ======  =====================================================
"""

from __future__ import annotations

import hashlib
import re
import uuid

PREFIX = "olss"
GROUP = "olss-workers"
"""The consumer group every worker of a model reads its stream with."""
WEBHOOK_GROUP = "olss-webhooks"
"""The consumer group the gateways' webhook dispatchers read a model's webhook stream with."""
ANONYMOUS = "anonymous"
"""The owner of the jobs made without authentication (``caller_jobs_zset``)."""
FLEET_TAG = "{fleet}"
WORKERS_SET = f"{PREFIX}:{FLEET_TAG}:workers"
MODELS_SET = f"{PREFIX}:{FLEET_TAG}:models"
LAST_READY_HASH = f"{PREFIX}:{FLEET_TAG}:last-ready"
FINISHED_CHANNEL = f"{PREFIX}:finished"
STREAM_JOB_FIELD = "job_id"
"""The one field of a jobs-stream entry."""
MODEL_TAG_LENGTH = 10
_JOB_ID = re.compile(rf"^([0-9a-f]{{{MODEL_TAG_LENGTH}}})-[0-9a-f]{{32}}$")


class InvalidJobId(ValueError):
    """A job id that no job can have (it does not start with a model tag)."""


def finished_notice(job_ids: list[str]) -> str:
    """The ``FINISHED_CHANNEL`` message for jobs that reached a final state together."""
    return " ".join(job_ids)


def finished_ids(notice: str) -> list[str]:
    """The job ids of a ``FINISHED_CHANNEL`` message."""
    return notice.split()


def model_tag(model: str) -> str:
    """The hash tag of a model's keys: the first hex digits of SHA-256 of its model key."""
    return hashlib.sha256(model.encode()).hexdigest()[:MODEL_TAG_LENGTH]


def new_job_id(model: str) -> str:
    """A fresh job id for ``model``: its tag, a dash, 32 random hex digits."""
    return f"{model_tag(model)}-{uuid.uuid4().hex}"


def job_tag(job_id: str) -> str:
    """The model tag a job id starts with; ``InvalidJobId`` when it has none."""
    match = _JOB_ID.match(job_id)
    if match is None:
        raise InvalidJobId(f"{job_id!r} is not a job id")
    return match.group(1)


def _model_prefix(model: str) -> str:
    return f"{PREFIX}:{{{model_tag(model)}}}"


def _job_prefix(job_id: str) -> str:
    return f"{PREFIX}:{{{job_tag(job_id)}}}"


def jobs_stream(model: str) -> str:
    return f"{_model_prefix(model)}:jobs"


def queued_zset(model: str) -> str:
    return f"{_model_prefix(model)}:queued"


def dead_stream(model: str) -> str:
    return f"{_model_prefix(model)}:dead"


def idempotency_key(model: str, digest: str) -> str:
    return f"{_model_prefix(model)}:idem:{digest}"


def caller_jobs_zset(model: str, owner: str | None) -> str:
    """The jobs of ``owner`` (an API key's digest, ``None`` without auth) for ``model``."""
    return f"{_model_prefix(model)}:caller:{owner or ANONYMOUS}"


def webhooks_stream(model: str) -> str:
    return f"{_model_prefix(model)}:webhooks"


def webhook_progress_key(job_id: str) -> str:
    return f"{_job_prefix(job_id)}:webhook:{job_id}"


def job_key(job_id: str) -> str:
    return f"{_job_prefix(job_id)}:job:{job_id}"


def events_key(job_id: str) -> str:
    return f"{_job_prefix(job_id)}:events:{job_id}"


def image_key(job_id: str, index: int) -> str:
    return f"{_job_prefix(job_id)}:image:{job_id}:{index}"


def cancel_key(job_id: str) -> str:
    return f"{_job_prefix(job_id)}:cancel:{job_id}"


def calibration_lock_key(model: str, identity: str) -> str:
    """The lock the worker that calibrates ``model`` (its model key) of ``identity``
    (``schedules.model_identity``) holds; one per identity, so two models that share a name
    do not wait for each other."""
    digest = hashlib.sha256(identity.encode()).hexdigest()[:16]
    return f"{_model_prefix(model)}:calibrating:{digest}"


def worker_key(worker_id: str) -> str:
    return f"{PREFIX}:{FLEET_TAG}:worker:{worker_id}"
