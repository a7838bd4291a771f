"""Answer a search job from this worker's replica of the collection. Pure of Celery."""

from __future__ import annotations

import logging

import numpy as np

from shared import keys
from shared.errors import Conflict, NotFound, SimsearchError
from shared.imaging import decode_image, to_model_input
from shared.schemas import (
    ItemError,
    ItemOutcome,
    ItemStatus,
    JobStatus,
    Match,
    SearchParams,
    SearchResult,
)
from worker.context import JobContext
from worker.replica import Replica
from worker.store import WorkerStore

log = logging.getLogger(__name__)

NO_MATCH = "No similar images found"


def _query_vector(ctx: JobContext, params: SearchParams) -> np.ndarray:
    if params.image_id is not None:
        vec = ctx.store.stored_vector(ctx.collection, params.image_id)
        if vec is None:
            raise NotFound(f"image {params.image_id} is not in collection {ctx.collection!r}", code="image_not_found")
        return vec
    data = ctx.store.blobs.get(keys.upload_blob(ctx.job_id, 0))
    if data is None:
        raise SimsearchError("the uploaded query image is gone (expired)", code="upload_expired", status_code=410)
    decoded = decode_image(data, max_pixels=ctx.max_pixels)
    return ctx.embedder.embed(to_model_input(decoded.image, ctx.embedder.input_size)[None])[0]


def search(ctx: JobContext, params: SearchParams) -> SearchResult:
    collection, embedder = ctx.collection, ctx.embedder
    replica: Replica | None = ctx.replicas.sync(collection)
    if replica is not None and replica.model != embedder.name:
        raise Conflict(
            f"collection {collection!r} was built with model {replica.model!r}; this worker runs {embedder.name!r}",
            code="model_mismatch",
        )
    query = _query_vector(ctx, params)
    if replica is None or len(replica.index) == 0:
        return SearchResult(matches=[], message="The collection is empty", collection_size=0, model=embedder.name)
    clustering = _clustering(ctx.store, replica, collection)
    if clustering is not None and clustering[1].shape[1] != query.shape[0]:
        clustering = None  # computed before a re-embed changed the dimension
    query_cluster = int(np.argmax(clustering[1] @ query)) if clustering else None
    mask = None
    if params.cluster is not None:
        if clustering is None:
            raise NotFound(f"collection {collection!r} has not been clustered", code="no_clusters")
        labels = clustering[2]
        mask = np.fromiter((labels.get(i) == params.cluster for i in replica.index.ids), bool, len(replica.index))
    # Searching by a stored image means "more like this one": the image itself is not a match.
    hits = replica.index.search(query, params.k, params.min_similarity, exclude=params.image_id, mask=mask)
    names = ctx.store.filenames(collection, [i for i, _ in hits])
    matches = [Match(image_id=i, filename=n, similarity=round(s, 6)) for (i, s), n in zip(hits, names, strict=True)]
    message = None
    if not matches:
        best = replica.index.search(query, 1, None, exclude=params.image_id, mask=mask)
        message = NO_MATCH
        if best and params.min_similarity is not None:
            message += f" (none reached min_similarity={params.min_similarity}; the closest had {best[0][1]:.3f})"
    return SearchResult(
        matches=matches,
        message=message,
        collection_size=len(replica.index),
        model=embedder.name,
        query_cluster=query_cluster,
    )


def _clustering(store: WorkerStore, replica: Replica, collection: str):
    current = store.clustering_id(collection)
    if current is None:
        replica.clustering = None
    elif replica.clustering is None or replica.clustering[0] != current:
        replica.clustering = store.clustering_state(collection)
    return replica.clustering


def run_search_job(ctx: JobContext) -> None:
    ctx.jobs.mark_running(ctx.job_id)
    params = SearchParams.model_validate(ctx.job.params)
    outcome = ItemOutcome(
        index=0, filename=params.filename or "", image_id=params.image_id or "", status=ItemStatus.created
    )
    try:
        result = search(ctx, params)
        result.served_by = ctx.served_by
        log.info("answered a search", extra={"collection": ctx.collection, "matches": len(result.matches)})
    except SimsearchError as exc:
        error = ItemError(
            index=0, filename=params.filename, image_id=params.image_id, error=exc.code, detail=exc.detail
        )
        ctx.jobs.record_items(ctx.job_id, [(outcome.model_copy(update={"status": ItemStatus.failed}), error)])
        ctx.jobs.finish(ctx.job_id, JobStatus.failed, {"error": exc.code, "detail": exc.detail})
    else:
        ctx.jobs.record_items(ctx.job_id, [(outcome, None)])
        ctx.jobs.finish(ctx.job_id, JobStatus.succeeded, result.model_dump(mode="json", exclude_none=True))
    finally:
        ctx.store.blobs.delete([keys.upload_blob(ctx.job_id, 0)])
