"""Fair shares between requesters: quotas per API key (or client address when the API runs open)
on open jobs, queued items and stored batch-search results, and the priority level a new job's
chunks start at (shared.queueing.chunk_priority).

Alice's five `search/batch {"all": true}` requests once queued 433 tasks in front of Bob's
one-image upload (26.7 s). Now her later jobs, and the back of each big job, sink to lower
priority levels of the same queue, and Bob's first chunk is read before them. The quotas bound
what one key can hold at all: past one, a 429 says which and what frees it.

Counting and reserving are one Lua script each over the requester's own keys (one Redis Cluster
slot), so concurrent requests of one key cannot all pass a count taken before any of them reserved
(a probe got 30 uploads past a quota of 5 that way). The job records' progress lives in the jobs'
own slots: it is read just before and passed in; a job reserved meanwhile counts by its
reservation, and progress read a moment early only counts more as queued. A job is reserved at
admission, before its record exists; a reservation whose job was never created lapses after
RESERVATION_S, and the request that made it releases it as it ends.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from api.settings import ApiSettings
from shared import keys
from shared.errors import SimsearchError
from shared.schemas import JobStatus

# What one match of a batch search costs Redis before the job has measured its own (a k=1000,
# 3,000-query batch held 330 MB: ~110 bytes a match with its row's share).
MATCH_BYTES = 110
RESERVATION_S = 900  # a request admitted but not yet created (a slow upload) holds its place this long

# KEYS: the owner's open jobs (zset job -> admitted/created at), reserved items (hash job -> items),
# results (zset job -> bytes). ARGV 1-5: this job's id (not counted), now, expiry cutoff (jobs
# older are gone), reservation cutoff, the records of the owner's jobs as JSON {id: [total, done,
# finished]} (total -1: a record without one; jobs without a record are absent). Counts what
# the owner holds besides this job: open jobs (unfinished with a record, or reserved recently),
# items not done (the larger of the record's total and the reservation, less done), result bytes
# (of jobs that exist or are reserved).
_TALLY = """
local function tally()
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
  local open, queued, held = 0, 0, 0
  local members = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  local live = {}
  local records = cjson.decode(ARGV[5])
  for i = 1, #members, 2 do
    local id, since = members[i], tonumber(members[i + 1])
    if id ~= ARGV[1] then
      local rec = records[id] or {-1, 0, 0}
      local reserved = tonumber(redis.call('HGET', KEYS[2], id) or '0')
      if rec[3] == 0 and (rec[1] >= 0 or since > tonumber(ARGV[4])) then
        open = open + 1
        live[id] = true
        queued = queued + math.max(0, math.max(rec[1], reserved) - rec[2])
      else
        redis.call('ZREM', KEYS[1], id)
      end
    end
  end
  for _, id in ipairs(redis.call('HKEYS', KEYS[2])) do
    if not live[id] and id ~= ARGV[1] then redis.call('HDEL', KEYS[2], id) end
  end
  local results = redis.call('ZRANGE', KEYS[3], 0, -1, 'WITHSCORES')
  for i = 1, #results, 2 do
    local id = results[i]
    if id ~= ARGV[1] then
      if live[id] or records[id] then
        held = held + tonumber(results[i + 1])
      else
        redis.call('ZREM', KEYS[3], id)
      end
    end
  end
  return open, queued, held
end
local function keep(ttl)
  for i = 1, 3 do redis.call('EXPIRE', KEYS[i], ttl) end
end
"""

# ARGV 6-7: max open jobs (0: none), ttl. Reserves a place for this job unless the owner has as many open.
ADMIT = (
    _TALLY
    + """
local open, queued, held = tally()
if tonumber(ARGV[6]) > 0 and open >= tonumber(ARGV[6]) then return {-1, open, queued, held} end
redis.call('ZADD', KEYS[1], 'NX', ARGV[2], ARGV[1])
redis.call('HSETNX', KEYS[2], ARGV[1], 0)
keep(ARGV[7])
return {1, open, queued, held}
"""
)

# ARGV 6-10: max items, this job's items, max result bytes, this job's result bytes, ttl.
TAKE = (
    _TALLY
    + """
local open, queued, held = tally()
if tonumber(ARGV[6]) > 0 and queued + tonumber(ARGV[7]) > tonumber(ARGV[6]) then return {-2, open, queued, held} end
if tonumber(ARGV[9]) > 0 and tonumber(ARGV[8]) > 0 and held + tonumber(ARGV[9]) > tonumber(ARGV[8]) then
  return {-3, open, queued, held}
end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[7])
if tonumber(ARGV[9]) > 0 then redis.call('ZADD', KEYS[3], ARGV[9], ARGV[1]) end
keep(ARGV[10])
return {1, open, queued, held}
"""
)

RELEASE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
"""


def _over(code: str, detail: str, retry_after: int = 5) -> SimsearchError:
    exc = SimsearchError(detail, code=code, status_code=429)
    exc.headers = {"Retry-After": str(retry_after)}
    return exc


def _keys(requester: str) -> list[str]:
    return [keys.owner_open(requester), keys.owner_reserved(requester), keys.owner_results(requester)]


async def _args(redis: Redis, settings: ApiSettings, requester: str, job_id: str) -> list[str | float]:
    now = time.time()
    return [job_id, now, now - settings.job_ttl_seconds, now - RESERVATION_S, await _records(redis, requester)]


async def _records(redis: Redis, requester: str) -> str:
    """{job id: [total (-1: none), done, 1 if finished]} of the requester's jobs that exist, as JSON
    for the scripts: a finished job is not open, whether or not its finisher took it out of the set."""
    pipe = redis.pipeline(transaction=False)
    pipe.zrange(keys.owner_open(requester), 0, -1)
    pipe.zrange(keys.owner_results(requester), 0, -1)
    opened, results = await pipe.execute()
    ids = sorted({i.decode() if isinstance(i, bytes) else i for i in (*opened, *results)})
    if not ids:
        return "{}"
    pipe = redis.pipeline(transaction=False)
    for job_id in ids:
        pipe.exists(keys.job(job_id))
        pipe.hmget(keys.job(job_id), ["total", "done", "status"])
    found = await pipe.execute()
    final = {s.value.encode() for s in JobStatus if s.final}
    return json.dumps(
        {
            i: [-1 if total is None else int(total), int(done or 0), int(status in final)]
            for i, exists, (total, done, status) in zip(ids, found[0::2], found[1::2], strict=True)
            if exists
        }
    )


@dataclass(frozen=True)
class Admission:
    """A job's place among its requester's: how many it has open besides it (the new job's
    priority base)."""

    open_jobs: int


async def admit(redis: Redis, settings: ApiSettings, requester: str, job_id: str) -> Admission:
    """Reserve a place for `job_id` among the requester's open jobs; 429 past MAX_OPEN_JOBS_PER_KEY."""
    cap = settings.max_open_jobs_per_key
    args = [*await _args(redis, settings, requester, job_id), cap, settings.job_ttl_seconds]
    code, open_jobs, _, _ = await redis.eval(ADMIT, 3, *_keys(requester), *args)
    if int(code) == -1:
        raise _over(
            "too_many_jobs",
            f"{open_jobs} jobs of yours are still open (MAX_OPEN_JOBS_PER_KEY={cap}); wait for one to finish",
        )
    return Admission(int(open_jobs))


async def take(redis: Redis, settings: ApiSettings, requester: str, job_id: str, items: int, matches: int = 0) -> None:
    """Reserve the job's items (and, for a batch search, its results at MATCH_BYTES a match: the
    worker settles them at their measured size) against the requester's quotas; 429 past them."""
    item_cap, byte_cap = settings.max_queued_items_per_key, settings.max_result_bytes_per_key
    size = matches * MATCH_BYTES
    args = [*await _args(redis, settings, requester, job_id), item_cap, items, byte_cap, size, settings.job_ttl_seconds]
    code, _, queued, held = await redis.eval(TAKE, 3, *_keys(requester), *args)
    if int(code) == -2:
        detail = (
            f"{int(queued):,} items of yours are queued and this request adds {items:,}"
            f" (MAX_QUEUED_ITEMS_PER_KEY={item_cap:,}); wait for your jobs to progress"
        )
        raise _over("too_many_items", detail + (", or send fewer items at once" if items > item_cap else ""))
    if int(code) == -3:
        raise _over(
            "too_many_results",
            f"your batch-search results hold {int(held) / 1e6:,.1f} MB and this batch may add {size / 1e6:,.1f} MB"
            f" (MAX_RESULT_BYTES_PER_KEY={byte_cap / 1e6:,.1f} MB); delete finished ones (DELETE /v1/jobs/{{job_id}}),"
            " wait for them to expire, or ask for a smaller k",
            retry_after=60,
        )


async def release(redis: Redis, requester: str, job_id: str) -> None:
    """Give back the place and reservations of a job that was never created (its request failed)."""
    await redis.eval(RELEASE, 3, *_keys(requester), job_id)
