"""Answer a search job from this worker's replica of the collection. Pure of Celery."""

from __future__ import annotations

import logging

import numpy as np

from shared import keys
from shared.errors import Conflict, NotFound, SimsearchError
from shared.imaging import decode_image, to_model_input
from shared.models.base import Embedder
from shared.schemas import (
    ImageRecord,
    ItemError,
    ItemOutcome,
    ItemStatus,
    JobStatus,
    Match,
    SearchParams,
    SearchResult,
)
from worker.replica import Replica, ReplicaSet
from worker.store import WorkerStore

log = logging.getLogger(__name__)

NO_MATCH = "No similar images found"


def _query_vector(
    store: WorkerStore, embedder: Embedder, job_id: str, collection: str, params: SearchParams, max_pixels: int
) -> np.ndarray:
    if params.image_id is not None:
        vec = store.stored_vector(collection, params.image_id)
        if vec is None:
            raise NotFound(f"image {params.image_id} is not in collection {collection!r}", code="image_not_found")
        return vec
    data = store.upload(job_id, 0)
    if data is None:
        raise SimsearchError("the uploaded query image is gone (expired)", code="upload_expired", status_code=410)
    decoded = decode_image(data, max_pixels=max_pixels)
    return embedder.embed(to_model_input(decoded.image, embedder.input_size)[None])[0]


def _filenames(store: WorkerStore, collection: str, ids: list[str]) -> list[str]:
    if not ids:
        return []
    raw = store.redis.hmget(keys.images(collection), ids)
    return [ImageRecord.model_validate_json(r).filename if r else "" for r in raw]


def search(
    store: WorkerStore,
    embedder: Embedder,
    replicas: ReplicaSet,
    job_id: str,
    collection: str,
    params: SearchParams,
    max_pixels: int,
) -> SearchResult:
    replica: Replica | None = replicas.sync(collection)
    if replica is not None and replica.model != embedder.name:
        raise Conflict(
            f"collection {collection!r} was built with model {replica.model!r}; this worker runs {embedder.name!r}",
            code="model_mismatch",
        )
    query = _query_vector(store, embedder, job_id, collection, params, max_pixels)
    if replica is None or len(replica.index) == 0:
        return SearchResult(matches=[], message="The collection is empty", collection_size=0, model=embedder.name)
    clustering = _clustering(store, replica, collection)
    query_cluster = int(np.argmax(clustering[1] @ query)) if clustering else None
    mask = None
    if params.cluster is not None:
        if clustering is None:
            raise NotFound(f"collection {collection!r} has not been clustered", code="no_clusters")
        labels = clustering[2]
        mask = np.fromiter((labels.get(i) == params.cluster for i in replica.index.ids), bool, len(replica.index))
    # Searching by a stored image means "more like this one": the image itself is not a match.
    hits = replica.index.search(query, params.k, params.min_similarity, exclude=params.image_id, mask=mask)
    names = _filenames(store, collection, [i for i, _ in hits])
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


def run_search_job(
    store: WorkerStore,
    embedder: Embedder,
    replicas: ReplicaSet,
    job_id: str,
    collection: str,
    max_pixels: int,
    served_by: str | None = None,
) -> None:
    raw = store.job_params(job_id)
    if raw is None:
        log.warning("search job %s expired before it ran", job_id)
        return
    store.mark_running(job_id)
    params = SearchParams.model_validate(raw)
    outcome = ItemOutcome(
        index=0, filename=params.filename or "", image_id=params.image_id or "", status=ItemStatus.created
    )
    try:
        result = search(store, embedder, replicas, job_id, collection, params, max_pixels)
        result.served_by = served_by
        log.info("answered a search", extra={"collection": collection, "matches": len(result.matches)})
    except SimsearchError as exc:
        error = ItemError(
            index=0, filename=params.filename, image_id=params.image_id, error=exc.code, detail=exc.detail
        )
        store.record_items(job_id, [(outcome.model_copy(update={"status": ItemStatus.failed}), error)])
        store.finish_job(job_id, JobStatus.failed, {"error": exc.code, "detail": exc.detail})
    else:
        store.record_items(job_id, [(outcome, None)])
        store.finish_job(job_id, JobStatus.succeeded, result.model_dump(mode="json", exclude_none=True))
    finally:
        store.drop_uploads(job_id, [0])
