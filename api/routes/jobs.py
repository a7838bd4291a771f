from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query

from api.auth import Principal, principal_of, require_scope
from api.deps import SettingsDep, StoreDep, WaiterDep
from shared.errors import NotFound
from shared.schemas import JOB_ID, JobView

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], dependencies=[Depends(principal_of)])


@router.get("/{job_id}", response_model=JobView, response_model_exclude_none=False)
async def get_job(
    job_id: str,
    store: StoreDep,
    waiter: WaiterDep,
    settings: SettingsDep,
    principal: Principal,
    wait: float = Query(0, ge=0, le=30, description="seconds to wait for the job to finish (long poll)"),
) -> JobView:
    if not JOB_ID.fullmatch(job_id):
        raise NotFound(f"no job {job_id!r} (job ids are 32 hex digits)", code="job_not_found")
    deadline = time.monotonic() + min(wait, settings.max_wait_seconds)
    # Watch before the first read: a job that finishes between the read and the watch would
    # otherwise only be noticed at the waiter's periodic re-check.
    async with waiter.watch(job_id) as event:
        job = await store.get_job(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r} (unknown or expired)", code="job_not_found")
        require_scope(principal, job.collection)
        while not job.status.final and (remaining := deadline - time.monotonic()) > 0:
            await waiter.sleep(event, remaining)
            event.clear()
            job = await store.get_job(job_id) or job
    return job
