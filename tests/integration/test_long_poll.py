"""Long polls of a job that finishes at the worst moment must not sleep until the re-check.

The route runs in this process against a real Redis and a real pub/sub waiter; the job is
finished (status written and published, as a worker does) right after the route's first read,
which is the interleaving that used to cost a whole re-check interval."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from api.rendered import RenderedJobs
from api.routes.jobs import get_job
from api.settings import ApiSettings
from api.store import ApiStore
from api.waiter import JobWaiter
from shared.schemas import JobStatus, JobType
from tests.integration.services import async_data_client

RECHECK_S = 5.0  # long enough that any wait for it shows


class FinishAfterFirstRead:
    """An ApiStore whose first read of the job is followed at once by the job finishing."""

    def __init__(self, store: ApiStore) -> None:
        self.store = store
        self.reads = 0

    async def get_job(self, job_id: str):
        job = await self.store.get_job(job_id)
        self.reads += 1
        if self.reads == 1:
            await self.store.jobs.finish(job_id, JobStatus.succeeded, {"ok": True})
        return job


async def _poll(redis_url: str, subscribe: bool) -> tuple[float, str, int]:
    client, listener = async_data_client(redis_url), async_data_client(redis_url)
    store = ApiStore(client, None, 600, 1000)  # type: ignore[arg-type]  # no uploads here
    waiter = JobWaiter(listener, recheck_s=RECHECK_S)
    if subscribe:
        waiter.start()
        await asyncio.wait_for(waiter.subscribed.wait(), 5)
    try:
        job_id = uuid.uuid4().hex
        await store.create_job(job_id, JobType.search, "c", {}, [])
        racing = FinishAfterFirstRead(store)
        started = time.monotonic()
        resp = await get_job(job_id, racing, waiter, ApiSettings(), None, RenderedJobs(), wait=10)  # type: ignore[arg-type]
        return time.monotonic() - started, json.loads(resp.body)["status"], racing.reads
    finally:
        await waiter.stop()
        await client.aclose()
        await listener.aclose()


def test_a_job_finishing_between_read_and_wait_is_noticed_at_once(redis_url: str) -> None:
    elapsed, status, reads = asyncio.run(_poll(redis_url, subscribe=True))
    assert status == "succeeded" and reads == 2
    assert elapsed < 0.5, f"the poll waited {elapsed:.2f}s (the re-check is {RECHECK_S}s)"


def test_before_the_subscription_is_active_waiters_recheck_quickly(redis_url: str) -> None:
    """At startup the finish message can arrive before the subscription: the poll must still
    return promptly rather than at the slow re-check."""
    elapsed, status, _ = asyncio.run(_poll(redis_url, subscribe=False))
    assert status == "succeeded"
    assert elapsed < 0.5, f"the poll waited {elapsed:.2f}s"


def test_an_already_finished_job_returns_without_waiting(redis_url: str) -> None:
    async def run() -> float:
        client, listener = async_data_client(redis_url), async_data_client(redis_url)
        store = ApiStore(client, None, 600, 1000)  # type: ignore[arg-type]  # no uploads here
        waiter = JobWaiter(listener, recheck_s=RECHECK_S)
        waiter.start()
        try:
            job_id = uuid.uuid4().hex
            await store.create_job(job_id, JobType.search, "c", {}, [])
            await store.jobs.finish(job_id, JobStatus.failed, {})
            started = time.monotonic()
            resp = await get_job(job_id, store, waiter, ApiSettings(), None, RenderedJobs(), wait=10)
            assert json.loads(resp.body)["status"] == "failed"
            return time.monotonic() - started
        finally:
            await waiter.stop()
            await client.aclose()
            await listener.aclose()

    assert asyncio.run(run()) < 0.2
