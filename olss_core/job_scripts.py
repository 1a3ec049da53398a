"""The Lua scripts that make the guarded job transitions, each one atomic step in Redis.

Status values, record field names and each transition's allowed source statuses come from
:mod:`olss_core.job_states` and :class:`olss_core.protocol.JobRecord`, never typed out here.
Callers register a script once with ``redis.register_script(ENQUEUE)`` and call it with the
``KEYS`` and ``ARGV`` its comment lists.
"""

from __future__ import annotations

from string import Template

from olss_core.job_states import TRANSITIONS, JobStatus, Transition
from olss_core.keys import STREAM_JOB_FIELD
from olss_core.protocol import JobRecord


def _field(name: str) -> str:
    """A JobRecord field name as a Lua string literal (unknown names fail at import)."""
    if name not in JobRecord.model_fields:
        raise KeyError(f"{name!r} is not a JobRecord field")
    return f"'{name}'"


def _status(status: JobStatus) -> str:
    return f"'{status.value}'"


def _status_in(variable: str, transition: Transition) -> str:
    """A Lua condition: ``variable`` is one of the transition's source statuses."""
    sources = sorted(s.value for s in TRANSITIONS[transition].sources if s is not None)
    return "(" + " or ".join(f"{variable} == '{value}'" for value in sources) + ")"


def _lua(template: str) -> str:
    return Template(template).substitute(
        JOB_FIELD=f"'{STREAM_JOB_FIELD}'",
        STATUS=_field("status"),
        ID=_field("id"),
        ATTEMPTS=_field("attempts"),
        STARTED_AT=_field("started_at"),
        FINISHED_AT=_field("finished_at"),
        WORKER=_field("worker"),
        STEP=_field("step"),
        QUEUED=_status(JobStatus.QUEUED),
        RUNNING=_status(JobStatus.RUNNING),
        CANCELED=_status(JobStatus.CANCELED),
        CAN_START=_status_in("status", Transition.START),
        CAN_CANCEL=_status_in("status", Transition.CANCEL),
    )


ENQUEUE = _lua("""
-- enqueue (gateway): a new job record, its queued event and its stream entry, or the job
-- already made for an idempotency key ('existing'; 'conflict' when that job was made for a
-- request with another fingerprint), or 'full' past the depth limit.
-- KEYS: job, queued zset, stream, events, idempotency (may be unused)
-- ARGV: job id, max depth, ttl, now, use idempotency (0/1), queued event fields x2,
--       request fingerprint, record fields
-- The idempotency key holds '<job id> <fingerprint>' (a bare job id before fingerprints).
if ARGV[5] == '1' then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    local id, fingerprint = string.match(existing, '^(%S+) ?(%S*)$$')
    if fingerprint ~= '' and fingerprint ~= ARGV[8] then return {'conflict', id} end
    return {'existing', id}
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[3]))
local depth = redis.call('ZCARD', KEYS[2])
if depth >= tonumber(ARGV[2]) then return {'full', tostring(depth)} end
redis.call('HSET', KEYS[1], unpack(ARGV, 9))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[4], '*', 'type', ARGV[6], 'data', ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('XADD', KEYS[3], '*', $JOB_FIELD, ARGV[1])
if ARGV[5] == '1' then redis.call('SET', KEYS[5], ARGV[1] .. ' ' .. ARGV[8], 'EX', ARGV[3]) end
return {'new', ARGV[1]}
""")

CANCEL = _lua("""
-- cancel (gateway): a queued job is canceled now ('now'); a running one gets its cancel flag
-- and stops at its next step ('asked'); a finished one is left alone ('finished:<status>').
-- KEYS: job, queued zset, events, cancel flag
-- ARGV: now, ttl, finished event fields x2, finished channel
local status = redis.call('HGET', KEYS[1], $STATUS)
if not status then return 'missing' end
if not $CAN_CANCEL then return 'finished:' .. status end
if status == $QUEUED then
  redis.call('HSET', KEYS[1], $STATUS, $CANCELED, $FINISHED_AT, ARGV[1])
  redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], $ID))
  redis.call('XADD', KEYS[3], '*', 'type', ARGV[3], 'data', ARGV[4])
  redis.call('PUBLISH', ARGV[5], redis.call('HGET', KEYS[1], $ID))
  return 'now'
end
redis.call('SET', KEYS[4], '1', 'EX', ARGV[2])
return 'asked'
""")

START = _lua("""
-- start (worker): move a delivered job to running and count an attempt, unless it is gone
-- ('missing'), finished ('finished'), canceled ('cancel') or out of attempts ('dead').
-- KEYS: job, queued zset, cancel flag.  ARGV: worker id, now, max attempts
local status = redis.call('HGET', KEYS[1], $STATUS)
if not status then return {'missing'} end
if not $CAN_START then return {'finished'} end
if redis.call('EXISTS', KEYS[3]) == 1 then return {'cancel'} end
redis.call('ZREM', KEYS[2], redis.call('HGET', KEYS[1], $ID))
local attempts = redis.call('HINCRBY', KEYS[1], $ATTEMPTS, 1)
if attempts > tonumber(ARGV[3]) then return {'dead'} end
redis.call('HSET', KEYS[1], $STATUS, $RUNNING, $STARTED_AT, ARGV[2], $WORKER, ARGV[1],
           $STEP, '0')
return {'run', redis.call('HGETALL', KEYS[1])}
""")
