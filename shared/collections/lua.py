"""The Lua of collection updates, run through the script objects of `shared.collections.scripts`
(which build their KEYS).

Every script touches the keys of one Redis Cluster slot: either the collection's header
(`{name}`) or one shard (`{name:i}`). What spans several (an index chunk over shards, a re-embed's
swap) is a sequence of such steps that converges when it runs again (see docs/architecture.md).

Every shard log entry carries `n`, the shard's version after it: versions and log entries move one
for one, so a replica that reads an entry whose `n` is not its own version + 1 knows it missed
entries.
"""

from __future__ import annotations

# ---- the collection header (`{name}`) -------------------------------------------------------------

# Create a collection with a number of shards (before any image). KEYS: header. ARGV: name,
# shards, now. Returns {1 if created, the shards it has}: one that exists keeps what it has.
CREATE_COLLECTION = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  return {0, tonumber(redis.call('HGET', KEYS[1], 'shards') or '1')}
end
redis.call('HSET', KEYS[1], 'shards', ARGV[2], 'name', ARGV[1], 'created_at', ARGV[3])
return {1, tonumber(ARGV[2])}
"""

# The model of the collection's vectors, claimed before an add writes to any shard. KEYS: header.
# ARGV: model, embedding, dim, name, now, 1 if the collection holds no image (read by the caller
# just before). An empty collection takes the model of whoever adds to it first. Returns
# {1} when ours is (now) the model, {-2, model} when another model holds the collection.
CLAIM_MODEL = """
local model = redis.call('HGET', KEYS[1], 'model')
if model and model ~= ARGV[1] and ARGV[6] ~= '1' then return {-2, model} end
if model ~= ARGV[1] then redis.call('HSET', KEYS[1], 'model', ARGV[1], 'dim', ARGV[3], 'embedding', ARGV[2]) end
redis.call('HSETNX', KEYS[1], 'embedding', ARGV[2])
redis.call('HSETNX', KEYS[1], 'name', ARGV[4])
redis.call('HSETNX', KEYS[1], 'created_at', ARGV[5])
return {1}
"""

# KEYS: header. ARGV: job_id, embedding, the re-embed the caller found ended ('' for none).
# Marks the collection as re-embedding for this job unless a re-embed it did not see ended holds
# it: {1}, or {-1, that job's id}. The shards are marked next (BEGIN_SHARD_REEMBED).
BEGIN_REEMBED = """
local running = redis.call('HGET', KEYS[1], 'reembed_job')
if running and running ~= ARGV[3] and running ~= ARGV[1] then return {-1, running} end
redis.call('HSET', KEYS[1], 'reembed_job', ARGV[1], 'reembed_embedding', ARGV[2])
return {1}
"""

# KEYS: header. ARGV: job_id. A re-embed that ends without swapping lets go, the header first
# (then its shards): 1, or 0 (not this job's), or -1 when its swap has begun (`BEGIN_SWAP`): shards
# cannot swap back, so from there the re-embed can only be finished, never abandoned.
ABORT_REEMBED = """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'reembed_swapping') == ARGV[1] then return -1 end
redis.call('HDEL', KEYS[1], 'reembed_job', 'reembed_embedding')
return 1
"""

# KEYS: header. ARGV: job_id. Every shard is ready: from here the swap rolls forward only (an
# abort is refused). 1, or -1 when the collection's re-embed is no longer this job's.
BEGIN_SWAP = """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then return -1 end
redis.call('HSET', KEYS[1], 'reembed_swapping', ARGV[1])
return 1
"""

# KEYS: header. ARGV: job_id, model, embedding, dim. The last step of a swap, once every shard
# swapped: the collection takes the new model. Returns 1, 2 (this job finished it already: a
# redelivered finisher) or -1 (not this job's re-embed).
FINISH_REEMBED = """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'last_reembed_job') == ARGV[1] then return 2 end
  return -1
end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'embedding', ARGV[3], 'dim', ARGV[4], 'last_reembed_job', ARGV[1])
redis.call('HDEL', KEYS[1], 'reembed_job', 'reembed_embedding', 'reembed_swapping')
return 1
"""

# ---- one shard (`{name:i}`) -----------------------------------------------------------------------

# KEYS: shard header, images, vectors, thumbs, log, order, staged, then one tombstone key per
# image. ARGV: model, embedding, dim, log maxlen, job seq, staged ttl, then quadruplets (image_id,
# record JSON, vector bytes or "" for a confirm-only item, thumbnail bytes or "": renditions live
# in the blob store; the hash holds only pre-blob ones).
# Returns {code, flags...}: code -2 on a model mismatch (nothing written), else 1 and per image
# 1 = created, 0 = already there, 2 = deleted after this job was queued (the delete wins).
# While a re-embed runs with this worker's embedding, new vectors are staged for it too.
ADD_IMAGES = """
local model = redis.call('HGET', KEYS[1], 'model')
if model and model ~= ARGV[1] and redis.call('HLEN', KEYS[2]) > 0 then return {-2, model} end
local seq = tonumber(ARGV[5])
local stage = redis.call('HGET', KEYS[1], 'reembed_embedding') == ARGV[2]
local out = {1}
local created = false
local n = 0
for i = 7, #ARGV, 4 do
  n = n + 1
  local id = ARGV[i]
  local tomb = tonumber(redis.call('GET', KEYS[7 + n]) or '0')
  if redis.call('HEXISTS', KEYS[2], id) == 1 then
    table.insert(out, 0)
  elseif tomb > seq or ARGV[i + 2] == '' then
    table.insert(out, 2)
  else
    redis.call('HSET', KEYS[2], id, ARGV[i + 1])
    redis.call('HSET', KEYS[3], id, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[4], id, ARGV[i + 3]) end
    if stage then
      redis.call('HSET', KEYS[7], id, ARGV[i + 2])
      redis.call('EXPIRE', KEYS[7], ARGV[6])
    end
    local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[4], '*', 'op', 'add', 'id', id, 'n', v)
    redis.call('ZADD', KEYS[6], v, id)
    table.insert(out, 1)
    created = true
  end
end
if created and model ~= ARGV[1] then
  redis.call('HSET', KEYS[1], 'model', ARGV[1], 'dim', ARGV[3], 'embedding', ARGV[2])
end
return out
"""

# KEYS: images, vectors, thumbs, log, shard header, order, staged, tombstone.
# ARGV: image_id, log maxlen, tombstone ttl, the delete's sequence number (drawn just before).
# The tombstone makes index jobs created before this delete skip the image, also when it is not
# stored yet because its job is still queued (then 0 is returned). It lives as long as a queued
# add could still run (its upload bytes' lifetime).
# Returns the deleted record (its rendition's blob is the caller's to delete). The version bump
# marks clusterings computed before it as stale.
DELETE_IMAGE = """
redis.call('SET', KEYS[8], ARGV[4], 'EX', ARGV[3])
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[7], ARGV[1])
redis.call('ZREM', KEYS[6], ARGV[1])
local v = redis.call('HINCRBY', KEYS[5], 'version', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'op', 'del', 'id', ARGV[1], 'n', v)
return record
"""

# KEYS: shard header, images, staged. ARGV: job_id, embedding. Marks the shard for the
# collection's re-embed (after the header) and returns its images' ids, read at the same instant:
# an image added after this is staged by its add.
BEGIN_SHARD_REEMBED = """
redis.call('HSET', KEYS[1], 'reembed_job', ARGV[1], 'reembed_embedding', ARGV[2])
redis.call('DEL', KEYS[3])
return redis.call('HKEYS', KEYS[2])
"""

# KEYS: shard header, staged. ARGV: job_id.
ABORT_SHARD_REEMBED = """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'reembed_job', 'reembed_embedding')
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: images, staged, shard header. ARGV: ttl, job_id, then pairs (image_id, vector bytes).
# Only images still in the shard get a staged vector: staged stays a subset of images, which
# lets SWAP_VECTORS check completeness by counting. Only the collection's current re-embed stages.
STAGE_VECTORS = """
if redis.call('HGET', KEYS[3], 'reembed_job') ~= ARGV[2] then return -1 end
local staged = 0
for i = 3, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then
    redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
    staged = staged + 1
  end
end
redis.call('EXPIRE', KEYS[2], ARGV[1])
return staged
"""

# KEYS: shard header, images, vectors, staged, thumbs, order, log.
# ARGV: job_id, model, embedding, dim, log maxlen, 1 to swap (0: only drop and count), then ids to
# drop (their rendition is unreadable).
# A re-embed's end, per shard: those images leave unless they have a staged vector; then, only if
# every remaining image has a staged vector, the staged vectors become the shard's and a 'reset'
# entry tells its replicas to rebuild. Returns {1 swapped (or ready, when not swapping) | 2 this
# job swapped it already | 0 not yet (images lack a vector) | -1 not this job's re-embed, dropped...}.
SWAP_VECTORS = """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'last_reembed_job') == ARGV[1] then return {2} end
  return {-1}
end
local out = {0}
for i = 7, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[4], id) == 0 and redis.call('HDEL', KEYS[2], id) == 1 then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('ZREM', KEYS[6], id)
    local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[5], '*', 'op', 'del', 'id', id, 'n', v)
    table.insert(out, id)
  end
end
if redis.call('HLEN', KEYS[2]) ~= redis.call('HLEN', KEYS[4]) then return out end
out[1] = 1
if ARGV[6] ~= '1' then return out end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[3])
  redis.call('PERSIST', KEYS[3])
else
  redis.call('DEL', KEYS[3])
end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'embedding', ARGV[3], 'dim', ARGV[4], 'last_reembed_job', ARGV[1])
redis.call('HDEL', KEYS[1], 'reembed_job', 'reembed_embedding')
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[5], '*', 'op', 'reset', 'id', '*', 'n', v)
return out
"""

# Publish a replica snapshot of a shard if it is newer than the one published (two workers may
# race). A published version above the shard's own is from before Redis lost writes: replaced; a
# new one above it is refused for the same reason.
# KEYS: snapshot pointer, shard header. ARGV: blob key, version, last log id, model, dim, count.
# Returns the blob key no longer named (to delete) or '' ; false if ours was not newer.
PUBLISH_SNAPSHOT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[2])
local shard_version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if version > shard_version then
  return false  -- written before Redis lost writes: it holds history the shard no longer has
end
if current >= version and current <= shard_version then
  return false
end
local prev = redis.call('HGET', KEYS[1], 'prev') or ''
local key = redis.call('HGET', KEYS[1], 'key') or ''
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'prev', key, 'version', ARGV[2], 'last_id', ARGV[3],
  'model', ARGV[4], 'dim', ARGV[5], 'count', ARGV[6])
return prev
"""

# KEYS: images. ARGV: pairs (image_id, record JSON). Records replaced in place (a migration); a
# record deleted meanwhile stays deleted.
REPLACE_RECORDS = """
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""
