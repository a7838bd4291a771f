"""Celery tasks: thin wrappers that build the job's context and hand it to pure functions.

Whatever a task body raises ends its items as failed with a reason (and the job, once every item
is accounted for): a job never stays `running` because of a bug. A lost Redis connection is
waited out in place and the task runs again (worker/upkeep/outages.py), because then the work is still
owed and nothing could be recorded anyway.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded

from shared.fanout import fan_out_messages, publish
from shared.jobs.kinds import KINDS
from shared.queueing import (
    BATCH_CHUNK_TASK,
    BATCH_DEADLINE_TASK,
    BATCH_SHARD_TASK,
    CLUSTER_TASK,
    DUPLICATES_TASK,
    EXPAND_TASK,
    INDEX_CHUNK_TASK,
    REEMBED_CHUNK_TASK,
    SEARCH_DEADLINE_TASK,
    SEARCH_SHARD_TASK,
    SEARCH_TASK,
    WEBHOOK_TASK,
    chunk_priority,
)
from shared.schemas import JobStatus
from worker import finishers
from worker.analysis import clustering_job, duplicates_job
from worker.app import app, runtime_of
from worker.context import JobContext, failed_item
from worker.ingest import expanding, indexing, reembedding
from worker.runtime import WorkerRuntime
from worker.search import batch_search, batch_shards, searching
from worker.upkeep import webhooks
from worker.upkeep.outages import OUTAGE, through_outages

log = logging.getLogger(__name__)
T = TypeVar("T")

# Every task is idempotent (content-addressed ids, HSETNX progress, first-finisher-wins), so a
# message redelivered after a worker died, or a body run again after a Redis outage, is safe.
# A task killed at the hard time limit goes back to the queue (its redelivery runs item by item
# with attempt counts) instead of being acked with its job left running. No `autoretry_for`: a
# Celery retry publishes to the broker, which is the Redis that is down (worker/upkeep/outages.py).
TASK = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "acks_on_timeout": False}


def outage_safe(task: Task, step: Callable[[], T]) -> T:
    """Run a task's whole body (sends included), again after each Redis outage it meets."""
    rt: WorkerRuntime = runtime_of(task.app)
    return through_outages(rt.store.redis, step, rt.settings.redis_outage_wait_s, f"{task.name} {task.request.id}")


def fail_remaining(ctx: JobContext, indices: list[int], code: str, detail: str) -> None:
    """Fail the items of `indices` not yet recorded, then finish the job if that completes it."""
    todo = ctx.jobs.unrecorded(ctx.job_id, indices)
    inputs = ctx.jobs.inputs(ctx.job_id, todo) if todo else []
    outcomes = [failed_item(i, inp, code, detail) for i, inp in zip(todo, inputs, strict=True)]
    complete = ctx.jobs.record_items(ctx.job_id, outcomes)
    indexing.drop_uploads(ctx, indices)
    if complete != 1:
        return
    try:
        finishers.finish(ctx)
    except OUTAGE:
        raise
    except Exception as exc:
        log.exception("finishing job %s failed", ctx.job_id)
        ctx.jobs.finish(ctx.job_id, JobStatus.failed, {"error": "internal_error", "detail": _why(exc)})


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:500]


def run(
    task: Task, job_id: str, indices: list[int], body: Callable[[JobContext], T], skip_ended: bool = True
) -> T | None:
    """The job body's value; None if it could not run (the job is gone or unreadable, or was
    cancelled and `skip_ended`) or raised (its items are then failed). Shard answers and deadlines
    run for a cancelled job too: each checks the job's end for itself. A chunk of a job that ended
    otherwise runs again harmlessly (its items are recorded already)."""
    return outage_safe(task, lambda: _run_once(task, job_id, indices, body, skip_ended))


def _run_once(
    task: Task, job_id: str, indices: list[int], body: Callable[[JobContext], T], skip_ended: bool
) -> T | None:
    rt: WorkerRuntime = runtime_of(task.app)
    try:
        ctx = rt.context(job_id, served_by=task.request.hostname)
    except OUTAGE:
        raise
    except Exception as exc:  # the job record itself is unreadable: nothing can run, so end it
        log.exception("job %s cannot be loaded", job_id)
        rt.jobs.finish(job_id, JobStatus.failed, {"error": "invalid_job", "detail": _why(exc)})
        return None
    if ctx is None:
        log.warning("job %s expired before it ran", job_id)
        return None
    if skip_ended and ctx.job.cancelled:
        log.info("job %s has ended (cancelled): its task is skipped", job_id)
        indexing.drop_uploads(ctx, indices)  # bytes nothing will read now
        return None
    try:
        return body(ctx)
    except OUTAGE:
        raise
    except SoftTimeLimitExceeded:
        fail_remaining(ctx, indices, "timeout", f"the task ran over {rt.settings.task_time_limit_s}s")
    except Exception as exc:
        log.exception("a %s task of job %s failed", ctx.job.type.value, job_id)
        fail_remaining(ctx, indices, "internal_error", _why(exc))
    return None


@app.task(name=INDEX_CHUNK_TASK, **TASK)
def index_chunk(self: Task, job_id: str, collection: str, indices: list[int]) -> None:
    run(self, job_id, indices, lambda ctx: indexing.index_chunk(ctx, indices))


@app.task(name=REEMBED_CHUNK_TASK, **TASK)
def reembed_chunk(self: Task, job_id: str, collection: str, indices: list[int]) -> None:
    run(self, job_id, indices, lambda ctx: reembedding.reembed_chunk(ctx, indices))


@app.task(name=SEARCH_TASK, **TASK)
def search(self: Task, job_id: str, collection: str) -> None:
    rt = runtime_of(self.app)
    shards = run(self, job_id, [0], lambda ctx: searching.run_search_job(ctx, rt.settings.served_shards))
    if not shards:
        maintain(rt, collection)
        return
    # A sharded collection: each shard's workers answer from their replica; the last to answer
    # merges. The deadline ends the search as `partial` if a shard has no live worker.
    messages = fan_out_messages(job_id, collection, shards, rt.settings.shard_timeout_s)
    outage_safe(self, lambda: publish(self.app, messages))


@app.task(name=SEARCH_SHARD_TASK, **TASK)
def search_shard(self: Task, job_id: str, collection: str, shard: int, shards: int) -> None:
    run(self, job_id, [0], lambda ctx: searching.run_shard_search(ctx, shard, shards), skip_ended=False)
    maintain(runtime_of(self.app), collection, shard)


@app.task(name=SEARCH_DEADLINE_TASK, **TASK)
def search_deadline(self: Task, job_id: str, collection: str, shards: int) -> None:
    run(self, job_id, [0], lambda ctx: searching.finish_at_deadline(ctx, shards), skip_ended=False)


def maintain(rt: WorkerRuntime, collection: str, shard: int = 0) -> None:
    """Replica housekeeping once the answer is out (snapshots): its failure fails no job."""
    try:
        rt.replicas.maintain(collection, shard)
    except Exception:
        log.exception("replica housekeeping for %s failed", collection)


# Listing a 100,000-member archive or a million-line file takes longer than an index chunk. A
# broker error while queueing a batch's chunks is an outage too (run again: the batch is found again).
EXPAND = TASK
EXPAND_LIMITS = {"soft_time_limit": 3 * 3600, "time_limit": 3 * 3600 + 120}


@app.task(name=EXPAND_TASK, **EXPAND, **EXPAND_LIMITS)
def expand(self: Task, job_id: str, collection: str, source: int) -> None:
    rt = runtime_of(self.app)
    size = rt.settings.index_chunk_size

    def sender(ctx: JobContext) -> expanding.SendChunks:
        # The listed items are queries of a batch search, or images to index.
        task, queue = KINDS[ctx.job.type].task, KINDS[ctx.job.type].queue
        base = ctx.job.params.priority  # the owner's open jobs when it was created

        def send_chunks(first: int, count: int) -> None:
            with self.app.producer_or_acquire() as producer:
                for start in range(first, first + count, size):
                    chunk = list(range(start, min(start + size, first + count)))
                    priority = chunk_priority(base, start // size)  # fair shares (shared.queueing)
                    args = [job_id, collection, chunk]
                    self.app.send_task(task, args, queue=queue, producer=producer, priority=priority)

        return send_chunks

    limits, meta_max = rt.settings.archive_limits, rt.settings.metadata_max_bytes_per_image
    # expand_source ends its source whatever fails short of Redis (the rest as one failed item).
    run(self, job_id, [], lambda ctx: expanding.expand_source(ctx, source, sender(ctx), limits, meta_max))


@app.task(name=WEBHOOK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def webhook(self: Task, job_id: str) -> None:
    rt = runtime_of(self.app)
    secret = rt.settings.webhook_secret
    policy = webhooks.WebhookPolicy(
        secret.get_secret_value() if secret else "", rt.settings.webhook_max_attempts, rt.settings.webhook_backoff_s
    )
    outage_safe(self, lambda: webhooks.deliver(rt.store.redis, rt.jobs, rt.sources.fetcher, policy, job_id))


@app.task(name=BATCH_CHUNK_TASK, **TASK)
def search_batch_chunk(self: Task, job_id: str, collection: str, indices: list[int]) -> None:
    rt = runtime_of(self.app)
    shards = run(self, job_id, indices, lambda ctx: batch_search.search_batch_chunk(ctx, indices))
    if not shards:
        return
    # A sharded collection: the chunk's queries are stored; each shard answers them all.
    messages = fan_out_messages(job_id, collection, shards, rt.settings.shard_timeout_s, indices)
    outage_safe(self, lambda: publish(self.app, messages))


@app.task(name=BATCH_SHARD_TASK, **TASK)
def search_batch_shard(self: Task, job_id: str, collection: str, indices: list[int], shard: int, shards: int) -> None:
    run(self, job_id, indices, lambda ctx: batch_shards.answer_shard(ctx, indices[0], shard, shards), skip_ended=False)
    maintain(runtime_of(self.app), collection, shard)


@app.task(name=BATCH_DEADLINE_TASK, **TASK)
def search_batch_deadline(self: Task, job_id: str, collection: str, indices: list[int], shards: int) -> None:
    run(self, job_id, indices, lambda ctx: batch_shards.at_deadline(ctx, indices[0], shards), skip_ended=False)


@app.task(name=DUPLICATES_TASK, **TASK)
def find_duplicates(self: Task, job_id: str, collection: str) -> None:
    run(self, job_id, [0], duplicates_job.run_duplicates_job)


@app.task(name=CLUSTER_TASK, **TASK)
def cluster(self: Task, job_id: str, collection: str) -> None:
    run(self, job_id, [0], clustering_job.run_cluster_job)
