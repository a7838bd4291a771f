from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import Response, StreamingResponse

from api import paths
from api.auth import Principal, job_not_found, principal_of
from api.deps import RenderedDep, SettingsDep, StoreDep, WaiterDep
from api.longpoll import until_final
from api.paths import job_url
from shared.errors import Conflict, NotFound
from shared.schemas import JOB_ID, JobType, JobView

router = APIRouter(prefix=paths.JOBS, tags=["jobs"], dependencies=[Depends(principal_of)])


@router.get("/{job_id}", response_model=JobView, response_model_exclude_none=False)
async def get_job(
    job_id: str,
    store: StoreDep,
    waiter: WaiterDep,
    settings: SettingsDep,
    principal: Principal,
    rendered: RenderedDep,  # one read and render of the job shared by every poller
    wait: float = Query(0, ge=0, le=30, description="seconds to wait for the job to finish (long poll)"),
) -> Response:
    if not JOB_ID.fullmatch(job_id):
        raise job_not_found(job_id)
    deadline = time.monotonic() + min(wait, settings.max_wait_seconds)
    # Watch before the first read: a job that finishes between the read and the watch would
    # otherwise only be noticed at the waiter's periodic re-check.
    async with waiter.watch(job_id) as event:
        view = await rendered.get(store, job_id)
        if view is None or (principal is not None and not principal.may_use(view.collection)):
            raise job_not_found(job_id)
        view = await until_final(store, waiter, rendered, job_id, event, deadline, view) or view
    return Response(view.body, media_type="application/json")


@router.delete("/{job_id}", status_code=204, response_class=Response)
async def delete_job(job_id: str, store: StoreDep, principal: Principal, rendered: RenderedDep) -> Response:
    """Remove a finished job and its results now (they would expire after JOB_TTL_SECONDS): frees
    the key's result bytes (MAX_RESULT_BYTES_PER_KEY) and cancels a callback not yet delivered.
    A job still running answers 409 job_running."""
    job = await store.get_job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or (principal is not None and not principal.may_use(job.collection)):
        raise job_not_found(job_id)
    if not job.status.final:
        detail = f"job {job_id!r} is {job.status.value}; cancel it (POST {job_url(job_id)}/cancel) or let it end"
        raise Conflict(detail, code="job_running")
    await store.delete_job(job_id)
    rendered.forget(job_id)
    return Response(status_code=204)


@router.post("/{job_id}/cancel", response_model=JobView)
async def cancel_job(job_id: str, store: StoreDep, principal: Principal, rendered: RenderedDep) -> Response:
    """End a queued or running job now: it fails with `cancelled`; workers skip its work not yet
    started (a chunk already running still records its items), its places in the key's quotas are
    freed, and a callback is sent as for any end. A job that has ended answers 409 job_ended."""
    job = await store.get_job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or (principal is not None and not principal.may_use(job.collection)):
        raise job_not_found(job_id)
    if job.status.final:
        raise Conflict(f"job {job_id!r} has ended ({job.status.value})", code="job_ended")
    await store.cancel_job(job)
    rendered.forget(job_id)
    view = await store.get_job(job_id)
    if view is None:
        raise job_not_found(job_id)
    return Response(view.model_dump_json().encode(), media_type="application/json")


RESULTS_PAGE = 1000
LINES_PAGE = 100  # rows read at a time while streaming JSON lines: a k=1000 row is ~110 KB
PAGE_BYTES = 8 << 20  # a JSON page's rows stop past this many bytes


@router.get("/{job_id}/results", response_model=None)
async def get_results(
    job_id: str,
    store: StoreDep,
    principal: Principal,
    offset: int = Query(0, ge=0, le=10**9),
    limit: int = Query(100, ge=1, le=RESULTS_PAGE),
    format: Literal["json", "jsonl"] = Query("json", description="jsonl: every result, streamed"),
) -> Response:
    """A batch search's answers in query order: `{"results": [{"query", "image_id", "matches"}],
    "total", "offset", "limit"}` (a query that failed, or is not answered yet, is `null`), or all
    of them as JSON lines."""
    job = await store.get_job(job_id) if JOB_ID.fullmatch(job_id) else None
    if job is None or (principal is not None and not principal.may_use(job.collection)):
        raise job_not_found(job_id)
    if job.type is not JobType.batch_search:
        raise NotFound(
            f"job {job_id!r} is a {job.type.value} job; only batch searches have results", code="not_batch_search"
        )
    total = job.progress.total
    if format == "json":
        # The rows are passed on as the workers wrote them: joined, never parsed and re-serialised;
        # a page ends early past PAGE_BYTES (k=1000 rows are ~110 KB each): go on from next_offset.
        end, rows, size, start, full = min(total, offset + limit), [], 0, offset, False
        while start < end and not full:
            part = await store.results(job_id, start, min(LINES_PAGE, end - start))
            start += len(part)
            for raw in part:
                row = raw or b"null"
                if rows and size + len(row) > PAGE_BYTES:
                    full = True
                    break
                rows.append(row)
                size += len(row)
        tail = f'], "total": {total}, "offset": {offset}, "limit": {limit}, "next_offset": {offset + len(rows)}}}'
        return Response(b'{"results": [' + b",".join(rows) + tail.encode(), media_type="application/json")

    async def lines() -> AsyncIterator[bytes]:
        for start in range(offset, total, LINES_PAGE):
            page = await store.results(job_id, start, min(LINES_PAGE, total - start))
            yield b"".join((r or b"null") + b"\n" for r in page)

    return StreamingResponse(lines(), media_type="application/x-ndjson")
