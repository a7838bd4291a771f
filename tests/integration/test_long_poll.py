"""Long polls of a job that finishes at the worst moment must not sleep until the re-check.

The route runs in this process against a real Redis and a real pub/sub waiter; the job is
finished (status written and published, as a worker does) right after the route's first read,
which is the interleaving that used to cost a whole re-check interval."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

from api.longpoll import until_final
from api.rendered import RenderedJobs
from api.routes.jobs import get_job
from api.settings import ApiSettings
from api.store import ApiStore
from api.waiter import JobWaiter
from shared.jobs.lifecycle import ANNOUNCE_MAX_BYTES
from shared.schemas import ItemError, ItemOutcome, ItemStatus, JobStatus, JobType
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
    # One read: the first (it races the finish); the woken waiter takes the view from the message.
    assert status == "succeeded" and reads == 1
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


class CountingStore:
    def __init__(self, store: ApiStore) -> None:
        self.store = store
        self.reads = 0

    async def get_job(self, job_id: str):
        self.reads += 1
        return await self.store.get_job(job_id)


async def _later(finish, store: ApiStore, client, job_id: str) -> None:
    await asyncio.sleep(0.05)
    await finish(store, client, job_id)


async def _wait_for_new_job(redis_url: str, finish, wait_s: float = 10) -> tuple[object, int, str, float]:
    """As `POST …/search?wait=` does: create, watch, then wait with no first read. `finish(store,
    client, job_id)` runs 50 ms in, as a worker would. Returns (view, reads, a fresh read's body, s)."""
    client, listener = async_data_client(redis_url), async_data_client(redis_url)
    store = ApiStore(client, None, 600, 1000)  # type: ignore[arg-type]  # no uploads here
    waiter = JobWaiter(listener, recheck_s=RECHECK_S)
    waiter.start()
    await asyncio.wait_for(waiter.subscribed.wait(), 5)
    try:
        job_id = uuid.uuid4().hex
        await store.create_job(job_id, JobType.search, "c", {"k": 3}, [])
        counting = CountingStore(store)
        async with waiter.watch(job_id) as event:
            finishing = asyncio.create_task(_later(finish, store, client, job_id)) if finish else None
            started = time.monotonic()
            view = await until_final(
                counting,  # type: ignore[arg-type]
                waiter,
                RenderedJobs(),
                job_id,
                event,
                started + wait_s,
                just_created=True,
            )
            elapsed = time.monotonic() - started
            if finishing is not None:
                await finishing
        fresh = await store.get_job(job_id)
        return view, counting.reads, fresh.model_dump_json(), elapsed
    finally:
        await waiter.stop()
        await client.aclose()
        await listener.aclose()


MATCHES = {
    "matches": [{"image_id": f"{i:064x}", "similarity": 0.9 - i / 100, "filename": f"{i}.jpg"} for i in range(10)]
}


def test_a_search_waiting_in_its_request_takes_the_answer_from_the_done_message(redis_url: str) -> None:
    async def finish(store: ApiStore, client, job_id: str) -> None:
        await store.jobs.finish(job_id, JobStatus.succeeded, MATCHES)

    view, reads, fresh, elapsed = asyncio.run(_wait_for_new_job(redis_url, finish))
    assert view is not None and view.final and elapsed < 0.5
    assert reads == 0  # neither before the wait (just created) nor after it (the message had the view)
    assert json.loads(view.body) == json.loads(fresh)  # the same view a read gives
    assert json.loads(view.body)["result"] == MATCHES


def test_a_job_with_item_errors_or_a_large_result_is_read_after_its_done_message(redis_url: str) -> None:
    async def with_error(store: ApiStore, client, job_id: str) -> None:
        error = ItemError(index=0, filename="q.jpg", error="invalid_image", detail="not an image")
        outcome = ItemOutcome(index=0, filename="q.jpg", image_id="", status=ItemStatus.failed)
        await store.jobs.record_items(job_id, [(outcome, error)])  # as a worker records it (with its TTL)
        await store.jobs.finish(job_id, JobStatus.failed, {})

    async def large(store: ApiStore, client, job_id: str) -> None:
        await store.jobs.finish(job_id, JobStatus.succeeded, {"blob": "x" * (ANNOUNCE_MAX_BYTES + 1)})

    for finish, status in ((with_error, "failed"), (large, "succeeded")):
        view, reads, fresh, elapsed = asyncio.run(_wait_for_new_job(redis_url, finish))
        assert view is not None and json.loads(view.body)["status"] == status and elapsed < 0.5
        assert reads == 1 and json.loads(view.body) == json.loads(fresh)
    assert json.loads(view.body)["result"]["blob"].startswith("xxx")


def test_a_new_job_not_finished_by_the_deadline_is_read_once(redis_url: str) -> None:
    view, reads, _, elapsed = asyncio.run(_wait_for_new_job(redis_url, None, wait_s=0.2))
    assert view is not None and not view.final and json.loads(view.body)["status"] == "queued"
    assert reads == 1 and 0.2 <= elapsed < 1.0
