"""Fair shares between requesters: quotas per API key (or client address when the API runs open)
on open jobs, queued items and stored batch-search results, and the priority level a new job's
chunks start at (shared.queueing.chunk_priority).

Alice's five `search/batch {"all": true}` requests once queued 433 tasks in front of Bob's
one-image upload (26.7 s). Now her later jobs, and the back of each big job, sink to lower
priority levels of the same queue, and Bob's first chunk is read before them. The quotas bound
what one key can hold at all: past one, a 429 says which and what frees it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from redis.asyncio import Redis

from api.settings import ApiSettings
from shared import keys
from shared.errors import SimsearchError

# What one match of a batch search costs Redis before the job has measured its own (a k=1000,
# 3,000-query batch held 330 MB: ~110 bytes a match with its row's share).
MATCH_BYTES = 110


def _over(code: str, detail: str, retry_after: int = 5) -> SimsearchError:
    exc = SimsearchError(detail, code=code, status_code=429)
    exc.headers = {"Retry-After": str(retry_after)}
    return exc


@dataclass(frozen=True)
class Admission:
    """What a requester has in flight when a new job is admitted."""

    open_jobs: int  # the new job's priority base
    queued_items: int  # items of its open jobs not yet done
    max_items: int  # MAX_QUEUED_ITEMS_PER_KEY (0: no limit)

    def take(self, items: int) -> None:
        """429 when `items` more would take the requester past its queued-items quota."""
        if self.max_items and self.queued_items + items > self.max_items:
            raise _over(
                "too_many_items",
                f"{self.queued_items:,} items of yours are queued and this request adds {items:,}"
                f" (MAX_QUEUED_ITEMS_PER_KEY={self.max_items:,}); wait for your jobs to progress"
                + (", or send fewer items at once" if items > self.max_items else ""),
            )


async def admit(redis: Redis, settings: ApiSettings, requester: str, results: bool = False) -> Admission:
    """The requester's open jobs and queued items; 429 past MAX_OPEN_JOBS_PER_KEY or
    MAX_QUEUED_ITEMS_PER_KEY, and (`results`: a batch search) past MAX_RESULT_BYTES_PER_KEY.
    Jobs that expired unfinished are dropped by age first, so no count can drift up."""
    key = keys.owner_open(requester)
    pipe = redis.pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", time.time() - settings.job_ttl_seconds)
    pipe.zrange(key, 0, -1)
    _, open_ids = await pipe.execute()
    open_jobs = len(open_ids)
    if settings.max_open_jobs_per_key and open_jobs >= settings.max_open_jobs_per_key:
        raise _over(
            "too_many_jobs",
            f"{open_jobs} jobs of yours are still open (MAX_OPEN_JOBS_PER_KEY={settings.max_open_jobs_per_key});"
            " wait for one to finish",
        )
    admission = Admission(open_jobs, await _queued_items(redis, open_ids), settings.max_queued_items_per_key)
    admission.take(0)
    if results:
        await _within_result_bytes(redis, settings, requester)
    return admission


async def _queued_items(redis: Redis, job_ids: list[bytes]) -> int:
    if not job_ids:
        return 0
    pipe = redis.pipeline(transaction=False)
    for job_id in job_ids:
        pipe.hmget(keys.job(job_id.decode()), "total", "done")
    return sum(max(0, int(total or 0) - int(done or 0)) for total, done in await pipe.execute())


async def result_bytes(redis: Redis, requester: str) -> int:
    """Bytes the requester's batch-search results hold in Redis (reserved while a job runs,
    measured when it ends); entries of jobs that expired or were deleted are pruned here."""
    key = keys.owner_results(requester)
    entries = await redis.zrange(key, 0, -1, withscores=True)
    if not entries:
        return 0
    pipe = redis.pipeline(transaction=False)
    for job_id, _ in entries:
        pipe.exists(keys.job(job_id.decode()))
    alive = await pipe.execute()
    if gone := [job_id for (job_id, _), live in zip(entries, alive, strict=True) if not live]:
        await redis.zrem(key, *gone)
    return int(sum(size for (_, size), live in zip(entries, alive, strict=True) if live))


async def _within_result_bytes(redis: Redis, settings: ApiSettings, requester: str) -> None:
    cap = settings.max_result_bytes_per_key
    if cap and (held := await result_bytes(redis, requester)) >= cap:
        raise _over(
            "too_many_results",
            f"your batch-search results hold {held / 1e6:,.1f} MB (MAX_RESULT_BYTES_PER_KEY={cap / 1e6:,.1f} MB);"
            " delete finished ones (DELETE /v1/jobs/{job_id}) or wait for them to expire",
            retry_after=60,
        )


async def reserve_results(redis: Redis, settings: ApiSettings, requester: str, job_id: str, matches: int) -> None:
    """Count a new batch search's results against its requester before they exist (the worker
    replaces the estimate with the measured size when the job ends)."""
    key = keys.owner_results(requester)
    pipe = redis.pipeline(transaction=False)
    pipe.zadd(key, {job_id: matches * MATCH_BYTES})
    pipe.expire(key, settings.job_ttl_seconds)
    await pipe.execute()
