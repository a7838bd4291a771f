"""Lua that moves a job between states atomically. Statuses come in as arguments, so their names
live only in `shared.schemas.JobStatus`."""

from __future__ import annotations

# Every script touches the keys of one job only (one Redis Cluster slot: `ss:job:{id}...`). What
# else a step changes (the open-jobs set, the owner's, the webhooks due, counters) is written by
# `shared.jobs.lifecycle` right after, idempotently, and put right by the watchdog
# (worker/upkeep/watchdog.py) if the writer died in between.

# A job is complete when every item it has is recorded and every source of items is listed.
_COMPLETE = """
local function complete(job)
  local done = tonumber(redis.call('HGET', job, 'done') or '0')
  local total = tonumber(redis.call('HGET', job, 'total') or '0')
  local sources = tonumber(redis.call('HGET', job, 'sources') or '0')
  if done >= total and sources <= 0 then return 1 end
  return 0
end
"""

# KEYS: job, items, errors. ARGV: ttl, then triplets (index, outcome JSON,
# error JSON or ""). HSETNX makes a redelivered task's second report of an item a no-op, so progress
# counts each item exactly once. Returns -1 if the job record is gone, else 1 when every item is
# accounted for.
RECORD_ITEMS = (
    _COMPLETE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HINCRBY', KEYS[1], 'done', 1)
    if ARGV[i + 2] ~= '' then
      redis.call('HINCRBY', KEYS[1], 'failed', 1)
      redis.call('RPUSH', KEYS[3], ARGV[i + 2])
      redis.call('EXPIRE', KEYS[3], ttl)
    end
  end
end
redis.call('EXPIRE', KEYS[2], ttl)
return complete(KEYS[1])
"""
)

# A job whose items are still being listed (an archive, a URL file, a bucket) grows by batches.
# KEYS: job, batches. ARGV: batch key (source:number), items, ttl. Returns
# the batch's first item index, the same one when a redelivered expansion asks again (then negated
# minus one, so the caller knows the batch was there already), or nil if the job is gone.
RESERVE_BATCH = """
local have = redis.call('HGET', KEYS[2], ARGV[1])
if have then return -tonumber(have) - 1 end
if redis.call('EXISTS', KEYS[1]) == 0 then return nil end
local n = tonumber(ARGV[2])
local start = redis.call('HINCRBY', KEYS[1], 'total', n) - n
redis.call('HSET', KEYS[2], ARGV[1], start)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return start
"""

# KEYS: job, batches. ARGV: source. One source is fully listed (once, however often this runs).
# Returns 1 when that completes the job (every source listed, every item recorded), else 0.
SOURCE_DONE = (
    _COMPLETE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if redis.call('HSETNX', KEYS[2], 'done:' .. ARGV[1], 1) == 1 then
  redis.call('HINCRBY', KEYS[1], 'sources', -1)
  -- A source with no batch creates the hash here: it lives as long as its job.
  local ttl = redis.call('TTL', KEYS[1])
  if ttl > 0 then redis.call('EXPIRE', KEYS[2], ttl) end
end
return complete(KEYS[1])
"""
)

# KEYS: job. ARGV: from status, to status, started_at.
MARK_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'started_at', ARGV[3])
  return 1
end
return 0
"""

# KEYS: job, its errors. ARGV: status, result JSON, finished_at, done channel, the largest record
# to announce (bytes), then every final status. The first finisher wins; a redelivered duplicate
# cannot overwrite a final status. A job with a callback becomes pending delivery in the same step.
# Returns -1 (gone), or {1 (this call finished it) or 0 (final already), owner or '', type, 1 if its
# callback awaits delivery}: what the caller records outside the job's slot -- a rerun too, since
# the first caller may have died before it did. The done channel is published from here: PUBLISH
# reaches every node of a cluster. The message is the final record itself (JSON: status, the hash's
# field/value list) when the job has no item errors and the record is small, so a waiting API answers
# without reading the job again; else only the status, and the API reads it.
FINISH_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
local owner = redis.call('HGET', KEYS[1], 'owner') or ''
local kind = redis.call('HGET', KEYS[1], 'type') or ''
for i = 6, #ARGV do
  if status == ARGV[i] then
    return {0, owner, kind, redis.call('HGET', KEYS[1], 'callback_status') == 'pending' and 1 or 0}
  end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'finished_at', ARGV[3])
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
end
local callback = 0
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then
  redis.call('HSET', KEYS[1], 'callback_status', 'pending', 'callback_attempts', 0)
  callback = 1
end
-- The status is written: nothing after this may fail before the PUBLISH (no rollback in Lua).
local message = ARGV[1]
local ok, record = pcall(function()
  if redis.call('LLEN', KEYS[2]) ~= 0 or #ARGV[2] > tonumber(ARGV[5]) then return nil end
  return cjson.encode({status = ARGV[1], job = redis.call('HGETALL', KEYS[1])})
end)
if ok and record and #record <= tonumber(ARGV[5]) then message = record end
redis.call('PUBLISH', ARGV[4], message)
return {1, owner, kind, callback}
"""

# Webhook deliveries due (FINISH_JOB adds a job with a callback). KEYS: due set. ARGV: now, lease
# until, batch. Due entries, each pushed to the lease time (a delivery not settled by then is due again).
CLAIM_DUE = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, job in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], job) end
return due
"""

# A delivery attempt's outcome, written only while the job exists (a job deleted while its callback
# was being posted must not come back as a record of callback fields alone). KEYS: job.
# ARGV: field/value pairs. Returns 1 if written (the caller then moves the job in the due set).
RECORD_CALLBACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 1, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# The next delivery attempt's number, or -1 if the job is gone. KEYS: job.
COUNT_CALLBACK_ATTEMPT = """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
return redis.call('HINCRBY', KEYS[1], 'callback_attempts', 1)
"""

SCRIPTS = {
    "record_items": RECORD_ITEMS,
    "mark_running": MARK_RUNNING,
    "finish_job": FINISH_JOB,
    "reserve_batch": RESERVE_BATCH,
    "source_done": SOURCE_DONE,
}
