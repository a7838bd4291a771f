"""Fair shares between requesters: a quota of open jobs per API key (or client address when the
API runs open), and the priority level a new job's chunks start at (shared.queueing.chunk_priority).

Alice's five `search/batch {"all": true}` requests once queued 433 tasks in front of Bob's
one-image upload (26.7 s). Now her later jobs, and the back of each big job, sink to lower
priority levels of the same queue, and Bob's first chunk is read before them.
"""

from __future__ import annotations

import time

from redis.asyncio import Redis

from api.settings import ApiSettings
from shared import keys
from shared.errors import SimsearchError


async def admit(redis: Redis, settings: ApiSettings, requester: str) -> int:
    """The requester's open jobs (its next job's priority base); 429 past MAX_OPEN_JOBS_PER_KEY.
    Jobs that expired unfinished are dropped by age first, so the count cannot drift up."""
    key = keys.owner_open(requester)
    pipe = redis.pipeline(transaction=False)
    pipe.zremrangebyscore(key, "-inf", time.time() - settings.job_ttl_seconds)
    pipe.zcard(key)
    _, open_jobs = await pipe.execute()
    if settings.max_open_jobs_per_key and open_jobs >= settings.max_open_jobs_per_key:
        detail = (
            f"{open_jobs} jobs of yours are still open (MAX_OPEN_JOBS_PER_KEY={settings.max_open_jobs_per_key});"
            " wait for one to finish"
        )
        exc = SimsearchError(detail, code="too_many_jobs", status_code=429)
        exc.headers = {"Retry-After": "5"}
        raise exc
    return open_jobs
