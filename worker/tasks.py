"""Celery tasks: thin wrappers that hand the process's runtime to pure functions."""

from __future__ import annotations

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared.queueing import CLUSTER_TASK, INDEX_CHUNK_TASK, REEMBED_CHUNK_TASK, SEARCH_TASK
from worker import clustering_job, indexing, reembedding, searching
from worker.app import app, runtime_of

# Every task is idempotent (content-addressed ids, HSETNX progress, first-finisher-wins), so a
# message redelivered after a worker died is safe to run again. A task that loses Redis midway is
# retried with backoff rather than failed: the work is still owed.
REDIS_DOWN = {
    "autoretry_for": (RedisConnectionError, RedisTimeoutError),
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 20,
}


@app.task(name=INDEX_CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, **REDIS_DOWN)
def index_chunk(self: Task, job_id: str, collection: str, indices: list[int]) -> None:
    rt = runtime_of(self.app)
    try:
        indexing.index_chunk(
            rt.store, rt.embedder, job_id, collection, indices, rt.settings.max_image_pixels, rt.fault_hook
        )
    except SoftTimeLimitExceeded:
        limit = rt.settings.task_time_limit_s
        indexing.fail_unrecorded(rt.store, job_id, indices, "timeout", f"the chunk ran over {limit}s")


@app.task(name=SEARCH_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, **REDIS_DOWN)
def search(self: Task, job_id: str, collection: str) -> None:
    rt = runtime_of(self.app)
    searching.run_search_job(
        rt.store, rt.embedder, rt.replicas, job_id, collection, rt.settings.max_image_pixels, self.request.hostname
    )


@app.task(name=REEMBED_CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, **REDIS_DOWN)
def reembed_chunk(self: Task, job_id: str, collection: str, indices: list[int]) -> None:
    rt = runtime_of(self.app)
    reembedding.reembed_chunk(rt.store, rt.embedder, job_id, collection, indices, rt.settings.max_image_pixels)


@app.task(name=CLUSTER_TASK, bind=True, acks_late=True, reject_on_worker_lost=True, **REDIS_DOWN)
def cluster(self: Task, job_id: str, collection: str) -> None:
    rt = runtime_of(self.app)
    clustering_job.run_cluster_job(rt.store, rt.replicas, job_id, collection)
