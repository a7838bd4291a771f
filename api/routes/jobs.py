from __future__ import annotations

import time

from fastapi import APIRouter, Depends, Query

from api.auth import Principal, principal_of, require_scope
from api.deps import SettingsDep, StoreDep, WaiterDep
from shared.errors import NotFound
from shared.schemas import JobView

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
    deadline = time.monotonic() + min(wait, settings.max_wait_seconds)
    job = await store.get_job(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r} (unknown or expired)", code="job_not_found")
    require_scope(principal, job.collection)
    if job.status.final or wait <= 0:
        return job
    async with waiter.watch(job_id) as event:
        while not job.status.final and (remaining := deadline - time.monotonic()) > 0:
            await waiter.sleep(event, remaining)
            job = await store.get_job(job_id) or job
    return job
