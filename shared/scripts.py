"""Lua scripts of fanned-out searches (collections: `shared.collections.lua`; job state:
`shared.jobs.scripts`)."""

from __future__ import annotations

# A shard's answer to a fanned-out search. KEYS: the job's shard answers (hash), the job record.
# ARGV: shard, answer JSON, ttl, final statuses... Returns how many shards have answered, or -1
# if the job already ended (a late shard after the deadline: nothing is written).
RECORD_SHARD = """
local status = redis.call('HGET', KEYS[2], 'status')
for i = 4, #ARGV do
  if status == ARGV[i] then return -1 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return redis.call('HLEN', KEYS[1])
"""


# A sharded batch chunk's merge writes its rows only if the chunk is still there and the shards
# that answered are those it merged: the deadline's merge must not overwrite (or be overwritten
# by) the fuller one of a shard that answered in between.
# KEYS: chunk, answers, results, partial set. ARGV: shards merged, ttl, partial (0/1), first, then
# field, row pairs.
WRITE_BATCH_MERGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
if redis.call('HLEN', KEYS[2]) ~= tonumber(ARGV[1]) then return 0 end
for i = 5, #ARGV, 2 do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
end
if #ARGV >= 5 then redis.call('EXPIRE', KEYS[3], ARGV[2]) end
if ARGV[3] == '1' then redis.call('SADD', KEYS[4], ARGV[4]) else redis.call('SREM', KEYS[4], ARGV[4]) end
redis.call('EXPIRE', KEYS[4], ARGV[2])
return 1
"""
