"""The job kinds a worker ends: each job type's finisher in one table, used by the tasks (a last
chunk recorded, items failed) and by growing jobs (a source's end completing the job), so a job
always ends as the kind it is. Params per kind: `shared.jobs.kinds`."""

from __future__ import annotations

from collections.abc import Callable

from shared.schemas import JobStatus, JobType
from worker.context import JobContext
from worker.ingest import indexing, reembedding
from worker.search import batch_search


def finish_single(ctx: JobContext) -> None:
    """A one-item job (search, cluster, duplicates) whose body raised: fail it with its item's error."""
    job = ctx.jobs.get(ctx.job_id)
    error = job.errors[0] if job and job.errors else None
    result = {"error": error.error, "detail": error.detail} if error else {"error": "internal_error", "detail": ""}
    ctx.jobs.finish(ctx.job_id, JobStatus.failed, result)


FINISHERS: dict[JobType, Callable[[JobContext], None]] = {
    JobType.index: indexing.finish_index_job,
    JobType.reembed: reembedding.finish_reembed_job,
    JobType.search: finish_single,
    JobType.cluster: finish_single,
    JobType.duplicates: finish_single,
    JobType.batch_search: batch_search.finish_batch_search,
}


def finish(ctx: JobContext) -> None:
    """End the job (all its items recorded) as its kind does."""
    FINISHERS[ctx.job.type](ctx)
