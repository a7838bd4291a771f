"""Lua scripts that make multi-key updates atomic.

Both the async API client and the sync worker client register the same sources
(`redis.register_script`), so the logic exists once.
"""

from __future__ import annotations

# KEYS: job, items, errors. ARGV: ttl, then triplets (index, outcome JSON, error JSON or "").
# HSETNX makes a redelivered task's second report of an item a no-op, so progress counts each item
# exactly once. Returns -1 if the job record is gone, else 1 when every item is accounted for.
RECORD_ITEMS = """
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
local done = tonumber(redis.call('HGET', KEYS[1], 'done') or '0')
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if done >= total then return 1 end
return 0
"""

# KEYS: job. ARGV: started_at.
MARK_RUNNING = """
if redis.call('HGET', KEYS[1], 'status') == 'queued' then
  redis.call('HSET', KEYS[1], 'status', 'running', 'started_at', ARGV[1])
  return 1
end
return 0
"""

# KEYS: job, job counts. ARGV: status, result JSON, finished_at, done channel.
# The first finisher wins; a redelivered duplicate cannot overwrite a final status.
FINISH_JOB = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return -1 end
if status == 'succeeded' or status == 'partial' or status == 'failed' then return 0 end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'result', ARGV[2], 'finished_at', ARGV[3])
redis.call('HINCRBY', KEYS[2], redis.call('HGET', KEYS[1], 'type') .. ':' .. ARGV[1], 1)
if not redis.call('HGET', KEYS[1], 'started_at') then
  redis.call('HSET', KEYS[1], 'started_at', ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[1])
return 1
"""

# KEYS: collection, images, vectors, thumbs, log, order.
# ARGV: model, dim, log maxlen, then quadruplets (image_id, record JSON, vector bytes, thumbnail bytes).
# An empty collection takes the model of whoever adds to it first.
# Returns {code, flags...}: code -2 on a model mismatch (nothing written), else 1 and per image
# 1 = created, 0 = already there. The log entry is what makes replicas see the image.
ADD_IMAGES = """
local model = redis.call('HGET', KEYS[1], 'model')
if model and model ~= ARGV[1] and redis.call('HLEN', KEYS[2]) > 0 then return {-2, model} end
if model ~= ARGV[1] then redis.call('HSET', KEYS[1], 'model', ARGV[1], 'dim', ARGV[2]) end
local out = {1}
for i = 4, #ARGV, 4 do
  if redis.call('HSETNX', KEYS[2], ARGV[i], ARGV[i + 1]) == 1 then
    redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 2])
    redis.call('HSET', KEYS[4], ARGV[i], ARGV[i + 3])
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[3], '*', 'op', 'add', 'id', ARGV[i])
    local seq = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('ZADD', KEYS[6], seq, ARGV[i])
    table.insert(out, 1)
  else
    table.insert(out, 0)
  end
end
return out
"""

# KEYS: images, vectors, thumbs, log, collection, labels, order. ARGV: image_id, log maxlen.
# The version bump marks clusters computed before it as stale.
DELETE_IMAGE = """
if redis.call('HDEL', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
redis.call('HINCRBY', KEYS[5], 'version', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'op', 'del', 'id', ARGV[1])
return 1
"""

# KEYS: collection, vectors, staged vectors, log. ARGV: model, dim, log maxlen.
# Ends a re-embed job: the staged vectors become the collection's, and a 'reset' entry tells every
# replica to rebuild rather than patch.
SWAP_VECTORS = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  redis.call('RENAME', KEYS[3], KEYS[2])
  redis.call('PERSIST', KEYS[2])
else
  redis.call('DEL', KEYS[2])
end
redis.call('HSET', KEYS[1], 'model', ARGV[1], 'dim', ARGV[2])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[3], '*', 'op', 'reset', 'id', '*')
return 1
"""
