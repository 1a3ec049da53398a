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
        WEBHOOK_ERROR=_field("webhook_error"),
        WEBHOOK_FAILURES=_field("webhook_failures"),
        QUEUED=_status(JobStatus.QUEUED),
        RUNNING=_status(JobStatus.RUNNING),
        CANCELED=_status(JobStatus.CANCELED),
        CAN_START=_status_in("status", Transition.START),
        CAN_CANCEL=_status_in("status", Transition.CANCEL),
    )


# The shebang makes this a Redis 7 "flagged" script without allow-oom: at maxmemory Redis
# refuses the whole call with an OOM error before it runs (app.errors maps it to 503). A script
# without flags would pass that check once its first write (ZREMRANGEBYSCORE) had run.
ENQUEUE = _lua("""#!lua
-- enqueue (gateway): a new job record, its queued event and its stream entry, or the job
-- already made for an idempotency key ('existing'; 'conflict' when that job was made for a
-- request with another fingerprint), or 'full' past the depth limit.
-- The stream entry carries the job id and a copy of the new record's fields, so the worker
-- that reads it has the spec without reading the record (workers.lifecycle).
-- The job joins its caller's jobs; a job with a webhook gets an entry on the webhook stream,
-- so its deliveries are due from the moment it exists (app.webhooks).
-- KEYS: job, queued zset, stream, events, idempotency (may be unused), caller's jobs zset,
--       webhook stream
-- ARGV: job id, max depth, ttl, now, use idempotency (0/1), queued event fields x2,
--       request fingerprint, has a webhook (0/1), record fields
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
redis.call('HSET', KEYS[1], unpack(ARGV, 10))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('XADD', KEYS[4], '*', 'type', ARGV[6], 'data', ARGV[7])
redis.call('EXPIRE', KEYS[4], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('XADD', KEYS[3], '*', $JOB_FIELD, ARGV[1], unpack(ARGV, 10))
redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', tonumber(ARGV[4]) - tonumber(ARGV[3]))
redis.call('ZADD', KEYS[6], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[6], ARGV[3])
if ARGV[9] == '1' then redis.call('XADD', KEYS[7], '*', $JOB_FIELD, ARGV[1]) end
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
-- start (worker): for each delivered job of one model, move it to running, count an attempt
-- and send its started event (ARGV's, with the attempt's number set), unless it is gone
-- ('missing'), finished ('finished'), canceled ('cancel') or out of attempts ('dead'); one
-- reply per job, in order. 'run' and 'dead' come with the record as it is now (a dead job's
-- attempts: those that ran).
-- KEYS: queued zset, then the job, its cancel flag and its events for each job.
-- ARGV: worker id, now, max attempts, started event fields x2 (data: JSON without attempt)
local replies = {}
for i = 2, #KEYS, 3 do
  local job, cancel, events = KEYS[i], KEYS[i + 1], KEYS[i + 2]
  local status = redis.call('HGET', job, $STATUS)
  if not status then
    replies[#replies + 1] = {'missing'}
  elseif not $CAN_START then
    replies[#replies + 1] = {'finished'}
  elseif redis.call('EXISTS', cancel) == 1 then
    replies[#replies + 1] = {'cancel'}
  else
    redis.call('ZREM', KEYS[1], redis.call('HGET', job, $ID))
    local attempts = (tonumber(redis.call('HGET', job, $ATTEMPTS)) or 0) + 1
    if attempts > tonumber(ARGV[3]) then
      replies[#replies + 1] = {'dead', redis.call('HGETALL', job)}
    else
      redis.call('HSET', job, $STATUS, $RUNNING, $STARTED_AT, ARGV[2], $WORKER, ARGV[1],
                 $STEP, '0', $ATTEMPTS, attempts)
      local event = cjson.decode(ARGV[5])
      event['attempt'] = attempts
      redis.call('XADD', events, '*', 'type', ARGV[4], 'data', cjson.encode(event))
      replies[#replies + 1] = {'run', redis.call('HGETALL', job)}
    end
  end
end
return replies
""")

SUCCEED = _lua("""#!lua
-- succeed (worker): store a batch's results (images, then the record), send each job's
-- finished event, acknowledge and delete the batch's stream entries and publish the finished
-- notice, in one atomic step: a waiter hears of a job once its result is stored, and no
-- notice is lost between the two. Flagged like ENQUEUE: at maxmemory the whole call is refused
-- before it runs, so no job is half stored. Returns the id of the last finished event.
-- KEYS: jobs stream, then for each job: its record, its events, its image keys
-- ARGV: group, image ttl, finished event fields x2, finished channel, notice, then for each
--       job: its entry id, its image count n, its record field count m, m name-value pairs,
--       n images
local a, k, entries, last = 7, 2, {}, nil
while a <= #ARGV do
  local entry, n, m = ARGV[a], tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  local job, events = KEYS[k], KEYS[k + 1]
  local fields = a + 3
  a, k = fields + 2 * m, k + 2
  for _ = 1, n do
    redis.call('SET', KEYS[k], ARGV[a], 'EX', ARGV[2])
    a, k = a + 1, k + 1
  end
  redis.call('HSET', job, unpack(ARGV, fields, fields + 2 * m - 1))
  last = redis.call('XADD', events, '*', 'type', ARGV[3], 'data', ARGV[4])
  entries[#entries + 1] = entry
end
redis.call('XACK', KEYS[1], ARGV[1], unpack(entries))
redis.call('XDEL', KEYS[1], unpack(entries))
redis.call('PUBLISH', ARGV[5], ARGV[6])
return last
""")

AFTER_STEP = _lua("""
-- after a denoising step (worker), for each job of the running batch: 1 when its cancel was
-- asked for (nothing written), else 0, having recorded the step and sent its step event when
-- its flag is '1' (a job whose step events carry previews sends them itself).
-- KEYS: the job, its cancel flag and its events, for each job.
-- ARGV: step event fields x2, one flag character per job, record fields (name, value pairs)
local replies = {}
for i = 1, #KEYS, 3 do
  local n = (i + 2) / 3
  if redis.call('EXISTS', KEYS[i + 1]) == 1 then
    replies[n] = 1
  else
    if string.sub(ARGV[3], n, n) == '1' then
      redis.call('HSET', KEYS[i], unpack(ARGV, 4))
      redis.call('XADD', KEYS[i + 2], '*', 'type', ARGV[1], 'data', ARGV[2])
    end
    replies[n] = 0
  end
end
return replies
""")

WEBHOOK_FAILED = _lua("""
-- a webhook attempt failed (gateway): note its error on the job record and, when the event
-- was given up, count it; nothing once the record has expired (no partial record is made).
-- KEYS: job.  ARGV: error, given up (0/1)
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], $WEBHOOK_ERROR, ARGV[1])
if ARGV[2] == '1' then redis.call('HINCRBY', KEYS[1], $WEBHOOK_FAILURES, 1) end
return 1
""")
