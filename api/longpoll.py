"""Waiting for a job to finish inside a request: the long poll of `GET /v1/jobs/{id}?wait=` and
of `POST …/search?wait=`, which answers with the finished job in one request."""

from __future__ import annotations

import asyncio
import time

from api.rendered import RenderedJobs
from api.store import ApiStore
from api.waiter import JobWaiter
from shared.schemas import JobView


async def until_final(
    store: ApiStore,
    waiter: JobWaiter,
    rendered: RenderedJobs,
    job_id: str,
    event: asyncio.Event,
    deadline: float,
    view: JobView | None = None,
) -> JobView | None:
    """The job's view once it is final or `deadline` (monotonic) passes. `event` comes from
    `waiter.watch(job_id)`, entered before the job could finish. None: the job is gone."""
    if view is None:
        view = await rendered.get(store, job_id)
    while view is not None and not view.final and (remaining := deadline - time.monotonic()) > 0:
        woke = await waiter.sleep(event, remaining)
        event.clear()
        # Woken by the job's "done" message: a view read after it arrived (one read, shared by
        # every waiter it woke), not the cached one.
        view = await rendered.get(store, job_id, fresh_after=waiter.noticed(job_id) if woke else None) or view
    return view
