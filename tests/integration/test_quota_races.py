"""Quotas hold under concurrency (api/fairness.py): counting and reserving are one Redis step, so
requests of one key arriving together cannot all pass a count taken before any reserved (a probe
got 30 uploads past a quota of 5, and 20 batch searches past a result budget). Real Redis; the
API's own functions, many at once."""

from __future__ import annotations

import asyncio
import time
import uuid

from api.fairness import MATCH_BYTES, RESERVATION_S, admit, release, take
from api.settings import ApiSettings
from shared import keys
from shared.errors import SimsearchError
from tests.integration.services import async_data_client, data_client

SETTINGS = ApiSettings(max_open_jobs_per_key=5, max_queued_items_per_key=50, max_result_bytes_per_key=1_000_000)


async def _admit_many(url: str, owner: str, n: int) -> list[str | None]:
    client = async_data_client(url)

    async def one() -> str | None:
        job_id = uuid.uuid4().hex
        try:
            await admit(client, SETTINGS, owner, job_id)
            return job_id
        except SimsearchError as exc:
            assert exc.code == "too_many_jobs" and exc.status_code == 429
            return None

    try:
        return await asyncio.gather(*(one() for _ in range(n)))
    finally:
        await client.aclose()


def test_concurrent_admissions_never_pass_the_open_jobs_quota(redis_url: str) -> None:
    owner = f"key:race-{uuid.uuid4().hex[:6]}"
    admitted = [j for j in asyncio.run(_admit_many(redis_url, owner, 30)) if j]
    assert len(admitted) == 5  # reserved at once, before any job record exists
    assert asyncio.run(_admit_many(redis_url, owner, 3)) == [None] * 3

    async def give_back_one() -> None:
        client = async_data_client(redis_url)
        await release(client, owner, admitted[0])  # a request that failed after its admission
        await client.aclose()

    asyncio.run(give_back_one())
    assert len([j for j in asyncio.run(_admit_many(redis_url, owner, 4)) if j]) == 1


def test_a_reservation_whose_job_never_came_lapses(redis_url: str) -> None:
    owner = f"key:lapse-{uuid.uuid4().hex[:6]}"
    admitted = [j for j in asyncio.run(_admit_many(redis_url, owner, 5)) if j]
    assert len(admitted) == 5
    client = data_client(redis_url)
    long_ago = time.time() - RESERVATION_S - 1
    client.zadd(keys.owner_open(owner), dict.fromkeys(admitted[:2], long_ago))  # their requests died
    assert len([j for j in asyncio.run(_admit_many(redis_url, owner, 5)) if j]) == 2


def test_concurrent_takes_never_pass_the_items_or_bytes_quotas(redis_url: str) -> None:
    async def scenario(owner: str, items: int, matches: int) -> list[str]:
        client = async_data_client(redis_url)
        settings = SETTINGS.model_copy(update={"max_open_jobs_per_key": 0})
        jobs = [uuid.uuid4().hex for _ in range(20)]
        for job_id in jobs:
            await admit(client, settings, owner, job_id)

        async def one(job_id: str) -> str:
            try:
                await take(client, settings, owner, job_id, items, matches)
                return "ok"
            except SimsearchError as exc:
                return exc.code

        try:
            return await asyncio.gather(*(one(j) for j in jobs))
        finally:
            await client.aclose()

    items = asyncio.run(scenario(f"key:items-{uuid.uuid4().hex[:6]}", items=10, matches=0))
    assert items.count("ok") == 5 and items.count("too_many_items") == 15  # 5 x 10 = the 50 allowed
    assert 2000 * MATCH_BYTES * 4 <= 1_000_000 < 2000 * MATCH_BYTES * 5
    results = asyncio.run(scenario(f"key:bytes-{uuid.uuid4().hex[:6]}", items=1, matches=2000))
    assert results.count("ok") == 4 and results.count("too_many_results") == 16
