"""The Lua of collection updates: multi-key changes made atomic, run through the script objects of
`shared.collections.scripts` (which build their KEYS).

Every log entry carries `n`, the collection's version after it: versions and log entries move one
for one, so a replica that reads an entry whose `n` is not its own version + 1 knows it missed
entries.
"""

from __future__ import annotations

# An image's shard (shared.shards.shard_of) and its collection's per-shard count ('count:<i>' in the
# collection hash; kept only for sharded collections, whose count is otherwise HLEN of images).
_SHARDS = """
local function count_shard(collection, id, delta)
  local shards = tonumber(redis.call('HGET', collection, 'shards') or '1')
  if shards > 1 then
    local shard = (tonumber(string.sub(id, 1, 8), 16) or 0) % shards
    redis.call('HINCRBY', collection, 'count:' .. shard, delta)
  end
end
"""

# KEYS: collections, collection, images, vectors, thumbs, log, order, staged, then one tombstone
# key per image. ARGV: model, embedding, dim, log maxlen, job seq, collection name, now, staged
# ttl, then quadruplets (image_id, record JSON, vector bytes or "" for a confirm-only item,
# thumbnail bytes or "": renditions live in the blob store; the hash holds only pre-blob ones).
# Returns {code, flags...}: code -2 on a model mismatch (nothing written), else 1 and per image
# 1 = created, 0 = already there, 2 = deleted after this job was queued (the delete wins).
# An empty collection takes the model of whoever adds to it first, and exists from its first image.
# While a re-embed runs with this worker's embedding, new vectors are staged for it too.
ADD_IMAGES = (
    _SHARDS
    + """
local model = redis.call('HGET', KEYS[2], 'model')
if model and model ~= ARGV[1] and redis.call('HLEN', KEYS[3]) > 0 then return {-2, model} end
local seq = tonumber(ARGV[5])
local stage = redis.call('HGET', KEYS[2], 'reembed_embedding') == ARGV[2]
local out = {1}
local created = false
local n = 0
for i = 9, #ARGV, 4 do
  n = n + 1
  local id = ARGV[i]
  local tomb = tonumber(redis.call('GET', KEYS[8 + n]) or '0')
  if redis.call('HEXISTS', KEYS[3], id) == 1 then
    table.insert(out, 0)
  elseif tomb > seq or ARGV[i + 2] == '' then
    table.insert(out, 2)
  else
    redis.call('HSET', KEYS[3], id, ARGV[i + 1])
    redis.call('HSET', KEYS[4], id, ARGV[i + 2])
    if ARGV[i + 3] ~= '' then redis.call('HSET', KEYS[5], id, ARGV[i + 3]) end
    if stage then
      redis.call('HSET', KEYS[8], id, ARGV[i + 2])
      redis.call('EXPIRE', KEYS[8], ARGV[8])
    end
    local v = redis.call('HINCRBY', KEYS[2], 'version', 1)
    redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[4], '*', 'op', 'add', 'id', id, 'n', v)
    redis.call('ZADD', KEYS[7], v, id)
    count_shard(KEYS[2], id, 1)
    table.insert(out, 1)
    created = true
  end
end
if created then
  if model ~= ARGV[1] then redis.call('HSET', KEYS[2], 'model', ARGV[1], 'dim', ARGV[3], 'embedding', ARGV[2]) end
  redis.call('HSETNX', KEYS[2], 'embedding', ARGV[2])
  redis.call('HSETNX', KEYS[2], 'name', ARGV[6])
  redis.call('HSETNX', KEYS[2], 'created_at', ARGV[7])
  redis.call('SADD', KEYS[1], ARGV[6])
end
return out
"""
)

# KEYS: images, vectors, thumbs, log, collection, labels, order, staged, seq, tombstone.
# ARGV: image_id, log maxlen, tombstone ttl.
# The tombstone (a fresh sequence number) makes index jobs created before this delete skip the
# image, also when it is not stored yet because its job is still queued (then 0 is returned). It
# lives as long as a queued add could still run (its upload bytes' lifetime); a collection that
# does not exist gets none (no key per probe of random ids).
# Returns the deleted record (its rendition's blob is the caller's to delete). The version bump
# marks clusterings computed before it as stale.
DELETE_IMAGE = (
    _SHARDS
    + """
if redis.call('EXISTS', KEYS[5]) == 0 then return 0 end
redis.call('SET', KEYS[10], redis.call('INCR', KEYS[9]), 'EX', ARGV[3])
local record = redis.call('HGET', KEYS[1], ARGV[1])
if not record then return 0 end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
redis.call('HDEL', KEYS[8], ARGV[1])
redis.call('ZREM', KEYS[7], ARGV[1])
count_shard(KEYS[5], ARGV[1], -1)
local v = redis.call('HINCRBY', KEYS[5], 'version', 1)
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'op', 'del', 'id', ARGV[1], 'n', v)
return record
"""
)

# KEYS: images, staged, collection. ARGV: ttl, job_id, then pairs (image_id, vector bytes).
# Only images still in the collection get a staged vector: staged stays a subset of images, which
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

# KEYS: collection, images, vectors, staged, thumbs, labels, order, log.
# ARGV: job_id, model, embedding, dim, log maxlen, then ids to drop (their rendition is unreadable).
# Ends a re-embed: those images leave unless they have a staged vector; then, only if every
# remaining image has a staged vector, the staged vectors become the collection's and a 'reset'
# entry tells every replica to rebuild. Returns {1 swapped | 2 this job swapped already (a
# redelivered finisher) | 0 not yet (images lack a vector) | -1 not this job's re-embed, dropped...}.
SWAP_VECTORS = (
    _SHARDS
    + """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then
  if redis.call('HGET', KEYS[1], 'last_reembed_job') == ARGV[1] then return {2} end
  return {-1}
end
local out = {0}
for i = 6, #ARGV do
  local id = ARGV[i]
  if redis.call('HEXISTS', KEYS[4], id) == 0 and redis.call('HDEL', KEYS[2], id) == 1 then
    redis.call('HDEL', KEYS[3], id)
    redis.call('HDEL', KEYS[5], id)
    redis.call('HDEL', KEYS[6], id)
    redis.call('ZREM', KEYS[7], id)
    count_shard(KEYS[1], id, -1)
    local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[5], '*', 'op', 'del', 'id', id, 'n', v)
    table.insert(out, id)
  end
end
if redis.call('HLEN', KEYS[2]) ~= redis.call('HLEN', KEYS[4]) then return out end
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('RENAME', KEYS[4], KEYS[3])
  redis.call('PERSIST', KEYS[3])
else
  redis.call('DEL', KEYS[3])
end
redis.call('HSET', KEYS[1], 'model', ARGV[2], 'embedding', ARGV[3], 'dim', ARGV[4])
redis.call('HDEL', KEYS[1], 'reembed_job', 'reembed_embedding')
redis.call('HSET', KEYS[1], 'last_reembed_job', ARGV[1])
local v = redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[5], '*', 'op', 'reset', 'id', '*', 'n', v)
out[1] = 1
return out
"""
)

# KEYS: collection, staged. ARGV: job_id. A re-embed that ends without swapping lets go.
ABORT_REEMBED = """
if redis.call('HGET', KEYS[1], 'reembed_job') ~= ARGV[1] then return 0 end
redis.call('HDEL', KEYS[1], 'reembed_job', 'reembed_embedding')
redis.call('DEL', KEYS[2])
return 1
"""

# KEYS: collection, images, staged. ARGV: job_id, embedding, job key prefix, then final statuses.
# Starts a re-embed unless another one is still running: sets the collection's marker and returns
# {1, ids...} (the images to re-embed, read at the same instant), or {-1, running job id}.
BEGIN_REEMBED = """
local running = redis.call('HGET', KEYS[1], 'reembed_job')
if running then
  local status = redis.call('HGET', ARGV[3] .. running, 'status')
  local final = false
  for i = 4, #ARGV do
    if status == ARGV[i] then final = true end
  end
  if status and not final then return {-1, running} end
end
redis.call('HSET', KEYS[1], 'reembed_job', ARGV[1], 'reembed_embedding', ARGV[2])
redis.call('DEL', KEYS[3])
local out = redis.call('HKEYS', KEYS[2])
table.insert(out, 1, 1)
return out
"""

# Publish a replica snapshot if it is newer than the one published (two workers may race).
# A published version above the collection's own is from before Redis lost writes: replaced; a
# new one above it is refused for the same reason.
# KEYS: snapshot pointer, collection hash.
# ARGV: blob key, version, last log id, model, dim, count.
# Returns the blob key no longer named (to delete) or '' ; false if ours was not newer.
PUBLISH_SNAPSHOT = """
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '-1')
local version = tonumber(ARGV[2])
local collection_version = tonumber(redis.call('HGET', KEYS[2], 'version') or '0')
if version > collection_version then
  return false  -- written before Redis lost writes: it holds history the collection no longer has
end
if current >= version and current <= collection_version then
  return false
end
local prev = redis.call('HGET', KEYS[1], 'prev') or ''
local key = redis.call('HGET', KEYS[1], 'key') or ''
redis.call('HSET', KEYS[1], 'key', ARGV[1], 'prev', key, 'version', ARGV[2], 'last_id', ARGV[3],
  'model', ARGV[4], 'dim', ARGV[5], 'count', ARGV[6])
return prev
"""

# Create a collection with a number of shards (before any image). KEYS: collections, collection.
# ARGV: name, shards, now. Returns the collection's shards: ours if it is new, else those it has.
# A collection that exists already (also one from before shards, which has no 'shards' field: 1)
# keeps what it has.
CREATE_COLLECTION = """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return tonumber(redis.call('HGET', KEYS[2], 'shards') or '1')
end
redis.call('HSET', KEYS[2], 'shards', ARGV[2], 'name', ARGV[1], 'created_at', ARGV[3], 'version', 0)
redis.call('SADD', KEYS[1], ARGV[1])
return tonumber(ARGV[2])
"""

# KEYS: images. ARGV: pairs (image_id, record JSON). Records replaced in place (a migration); a
# record deleted meanwhile stays deleted.
REPLACE_RECORDS = """
for i = 1, #ARGV, 2 do
  if redis.call('HEXISTS', KEYS[1], ARGV[i]) == 1 then redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1]) end
end
"""
