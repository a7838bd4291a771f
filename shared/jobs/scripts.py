"""Lua that moves a job between states atomically. Statuses come in as arguments, so their names
live only in `shared.schemas.JobStatus`."""

from __future__ import annotations

# Every script that shows a job alive (started, an item recorded, a batch listed) moves its time in
# the open-jobs set (XX: a finished job, gone from it, is never put back); FINISH_JOB takes it out.
# The watchdog (worker/upkeep/watchdog.py) re-drives the jobs that went quiet there.

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

# KEYS: job, items, errors, open jobs. ARGV: ttl, job id, now, then triplets (index, outcome JSON,
# error JSON or ""). HSETNX makes a redelivered task's second report of an item a no-op, so progress
# counts each item exactly once. Returns -1 if the job record is gone, else 1 when every item is
# accounted for.
RECORD_ITEMS = (
    _COMPLETE
    + """
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local ttl = tonumber(ARGV[1])
redis.call('ZADD', KEYS[4], 'XX', ARGV[3], ARGV[2])
for i = 4, #ARGV, 3 do
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
# KEYS: job, batches, open jobs. ARGV: batch key (source:number), items, ttl, job id, now. Returns
# the batch's first item index, the same one when a redelivered expansion asks again (then negated
# minus one, so the caller knows the batch was there already), or nil if the job is gone.
RESERVE_BATCH = """
redis.call('ZADD', KEYS[3], 'XX', ARGV[5], ARGV[4])
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

# KEYS: job, open jobs. ARGV: from status, to status, started_at, job id, now.
MARK_RUNNING = """
redis.call('ZADD', KEYS[2], 'XX', ARGV[5], ARGV[4])
if redis.call('HGET', KEYS[1], 'status') == ARGV[1] then
  redis.call('HSET', KEYS[1], 'status', ARGV[2], 'started_at', ARGV[3])
  return 1
end
return 0
"""

# KEYS: job, job counts, webhooks due, open jobs. ARGV: status, result JSON,
# finished_at, done channel, job id, now (epoch seconds), the owner's open-jobs key template,
# then every final status. The first
# finisher wins; a redelivered duplicate cannot overwrite a final status. A job with a callback
# becomes due for delivery in the same step, so a finisher that dies right after cannot lose the
# notification; the winner also counts the job out of its owner's open jobs.
FINISH_JOB = """
redis.call('ZREM', KEYS[4], ARGV[5])
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
for i = 8, #ARGV do
  if status == ARGV[i] then return 0 end
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'finished_at', ARGV[3])
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner then
  -- The owner's open-jobs set, named from the job's own record by shared.keys.owner_open's template.
  redis.call('ZREM', string.format(ARGV[7], owner), ARGV[5])
end
redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'type') .. ':' .. ARGV[1], 1)
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
end
if redis.call('HEXISTS', KEYS[1], 'callback_url') == 1 then
  redis.call('HSET', KEYS[1], 'callback_status', 'pending', 'callback_attempts', 0)
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""

# Webhook deliveries due (FINISH_JOB adds a job with a callback). KEYS: due set. ARGV: now, lease
# until, batch. Due entries, each pushed to the lease time (a delivery not settled by then is due again).
CLAIM_DUE = """
local due = redis.call('ZRANGE', KEYS[1], '-inf', ARGV[1], 'BYSCORE', 'LIMIT', 0, tonumber(ARGV[3]))
for _, job in ipairs(due) do redis.call('ZADD', KEYS[1], ARGV[2], job) end
return due
"""

# A delivery attempt's outcome, written only while the job exists (a job deleted while its callback
# was being posted must not come back as a record of callback fields alone). KEYS: job, due set.
# ARGV: job id, when to try again ('' once settled), then field/value pairs. Returns 1 if written.
RECORD_CALLBACK = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 0
end
for i = 3, #ARGV, 2 do redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
if ARGV[2] == '' then redis.call('ZREM', KEYS[2], ARGV[1]) else redis.call('ZADD', KEYS[2], ARGV[2], ARGV[1]) end
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
