"""One read and render of a job for every poller at once (api/rendered.py)."""

from __future__ import annotations

import asyncio
import time

from api.rendered import RenderedJobs
from shared.schemas import JobStatus, JobType, JobView, Progress


class SlowStore:
    def __init__(self) -> None:
        self.reads = 0
        self.status = JobStatus.running

    async def get_job(self, job_id: str) -> JobView:
        self.reads += 1
        await asyncio.sleep(0.05)  # a 238 KB view takes a while to read and parse
        return JobView(
            job_id=job_id,
            type=JobType.index,
            collection="c",
            status=self.status,
            progress=Progress(total=1000, done=10, failed=10),
            created_at="2026-12-04T00:00:00Z",
        )


def test_concurrent_pollers_share_one_read_and_a_woken_waiter_gets_a_fresh_one() -> None:
    async def scenario() -> None:
        store, rendered = SlowStore(), RenderedJobs(ttl_s=10)
        views = await asyncio.gather(*(rendered.get(store, "j") for _ in range(400)))
        assert store.reads == 1 and len({v.body for v in views}) == 1 and not views[0].final
        store.status = JobStatus.succeeded
        noticed = time.monotonic()  # the job's "done" message arrives
        woken = await asyncio.gather(*(rendered.get(store, "j", fresh_after=noticed) for _ in range(400)))
        assert store.reads == 2 and all(v.final for v in woken)  # one fresh read for all 400
        assert (await rendered.get(store, "j")).final and store.reads == 2  # cached while final

    asyncio.run(scenario())


def test_a_failed_read_fails_every_sharer_and_is_not_cached() -> None:
    class Down(SlowStore):
        async def get_job(self, job_id: str) -> JobView:
            self.reads += 1
            await asyncio.sleep(0.01)
            raise ConnectionError("redis down")

    async def scenario() -> None:
        store, rendered = Down(), RenderedJobs()
        results = await asyncio.gather(*(rendered.get(store, "j") for _ in range(5)), return_exceptions=True)
        assert store.reads == 1 and all(isinstance(r, ConnectionError) for r in results)
        await asyncio.gather(rendered.get(store, "j"), return_exceptions=True)
        assert store.reads == 2

    asyncio.run(scenario())


def test_waiters_woken_by_one_message_share_one_parse_of_it(monkeypatch) -> None:
    import api.rendered as rendered_module

    job = JobView(
        job_id="j",
        type=JobType.search,
        collection="c",
        status=JobStatus.succeeded,
        progress=Progress(total=1, done=1, failed=0),
        result={"matches": []},
        created_at="2026-12-04T00:00:00Z",
    )
    parses = []

    def parse(job_id: str, message: bytes) -> JobView | None:
        parses.append(message)
        return job if message.startswith(b"{") else None  # as the real one: a bare status has no view

    monkeypatch.setattr(rendered_module, "parse_announcement", parse)
    rendered, store = RenderedJobs(), SlowStore()
    noticed = time.monotonic()
    views = [rendered.announced("j", b'{"status": "succeeded"}', noticed) for _ in range(400)]
    assert len(parses) == 1 and all(v is views[0] for v in views) and views[0].final
    assert rendered.announced("j", b"succeeded", noticed) is views[0]  # cached: even a bare status is served
    later = time.monotonic()
    assert rendered.announced("j", b"succeeded", later) is None  # a newer message with no view: read it

    async def read_after() -> None:
        assert (await rendered.get(store, "j", fresh_after=noticed)) is views[0] and store.reads == 0

    asyncio.run(read_after())
