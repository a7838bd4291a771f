"""The clustering job: cluster the worker's current replica of a collection and store the result."""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np

from shared.errors import SimsearchError
from shared.jobs.kinds import ClusterParams
from shared.schemas import ItemOutcome, ItemStatus, utcnow
from worker.analysis.clustering import cluster
from worker.context import JobContext, end_single
from worker.model.threads import all_cores

log = logging.getLogger(__name__)


def run_cluster_job(ctx: JobContext) -> None:
    store, jobs, job_id, collection = ctx.store, ctx.jobs, ctx.job_id, ctx.collection
    params = ctx.job.params_of(ClusterParams)
    jobs.mark_running(job_id)
    outcome = ItemOutcome(index=0, filename="", image_id="", status=ItemStatus.created)
    try:
        # The version is read first: anything that changes the collection after it marks this
        # clustering stale.
        version = store.collection_version(collection)
        ids, rows = _source(ctx)
        if len(ids) < 3:
            raise SimsearchError("clustering needs at least 3 images", code="too_few_images", status_code=409)
        try:
            with all_cores():
                result = cluster(rows, params.k, params.k_min, params.k_max, n=len(ids))
        except ValueError as exc:
            raise SimsearchError(str(exc), code="invalid_k", status_code=400) from exc
        summary = {
            "k": result.k,
            "silhouette": {str(k): v for k, v in result.silhouette.items()},
            "created_at": utcnow(),
            "image_count": int((result.labels >= 0).sum()),
            "clusters": [
                {
                    "cluster": c,
                    "size": result.sizes[c],
                    "medoid_image_id": ids[result.medoids[c]] if result.medoids[c] >= 0 else None,
                    "sample_image_ids": [ids[r] for r in result.samples[c]],
                }
                for c in range(result.k)
            ],
        }
        labels = {image_id: int(label) for image_id, label in zip(ids, result.labels, strict=True) if label >= 0}
        members = [[] for _ in range(result.k)]
        for row in np.argsort(-result.similarity, kind="stable").tolist():
            if result.labels[row] >= 0:  # not deleted while the job ran
                members[int(result.labels[row])].append(ids[row])
        store.save_clustering(collection, job_id, summary, labels, members, result.centroids, version)
    except SimsearchError as exc:
        end_single(ctx, outcome, exc)
        return
    end_single(ctx, outcome, {**summary, "stale": False})


def _source(ctx: JobContext) -> tuple[list[str], Callable[[np.ndarray], np.ndarray]]:
    """Every image id and a reader of their vectors by position. An unsharded collection is read
    from this worker's replica; a sharded one from Redis (this worker may hold none of its shards,
    and must not build replicas of shards it does not serve)."""
    store, collection = ctx.store, ctx.collection
    if store.collection_shards(collection) <= 1:
        replica = ctx.replicas.sync(collection)
        return (replica.index.ids, replica.index.rows) if replica is not None else ([], np.zeros)
    dim = store.header(collection).dim
    ids = store.vector_ids(collection)
    fetch = ctx.replicas.fetcher(collection, dim or 0, None)
    return ids, lambda positions: fetch([ids[p] for p in positions])
