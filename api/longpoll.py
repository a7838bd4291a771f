"""Waiting for a job to finish inside a request: the long poll of `GET /v1/jobs/{id}?wait=` and
of `POST …/search?wait=`, which answers with the finished job in one request."""

from __future__ import annotations

import asyncio
import time

from api.rendered import Rendered, RenderedJobs
from api.store import ApiStore
from api.waiter import JobWaiter


async def until_final(
    store: ApiStore,
    waiter: JobWaiter,
    rendered: RenderedJobs,
    job_id: str,
    event: asyncio.Event,
    deadline: float,
    view: Rendered | None = None,
    *,
    just_created: bool = False,
) -> Rendered | None:
    """The job's view once it is final or `deadline` (monotonic) passes. `event` comes from
    `waiter.watch(job_id)`, entered before the job could finish. None: the job is gone.
    `just_created`: this request created the job after watching it, so it cannot be final before
    the event fires: no first read."""
    if view is None and not just_created:
        view = await rendered.get(store, job_id)
    unread = just_created
    while (unread or (view is not None and not view.final)) and (remaining := deadline - time.monotonic()) > 0:
        woke = await waiter.sleep(event, remaining)
        event.clear()
        unread = False
        noticed = waiter.noticed(job_id) if woke else None
        # Woken by the job's "done" message: the final view it carried, else a view read after it
        # arrived (one read, shared by every waiter it woke), not the cached one.
        announced = rendered.announced(job_id, waiter.message(job_id), noticed) if woke else None
        view = announced or await rendered.get(store, job_id, fresh_after=noticed) or view
    if unread:  # the deadline passed before the first wait
        view = await rendered.get(store, job_id)
    return view
