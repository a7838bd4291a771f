"""Answer a search job from this worker's replica of the collection. Pure of Celery."""

from __future__ import annotations

import logging

import numpy as np

from shared import fanout, filters, keys
from shared.errors import Conflict, NotFound, SimsearchError
from shared.fanout import ShardAnswer
from shared.imaging import decode_image, to_model_input
from shared.schemas import (
    Example,
    ItemOutcome,
    ItemStatus,
    JobStatus,
    Match,
    SearchParams,
    SearchResult,
    Threshold,
)
from shared.shards import serves
from worker.context import JobContext, end_single
from worker.search.calibration import no_match_message
from worker.search.replica import Replica
from worker.store import WorkerStore

log = logging.getLogger(__name__)


def excluded(params: SearchParams) -> set[str]:
    """Stored images a search is about, never among its matches ("more like this one")."""
    examples = [*(params.positive or []), *(params.negative or [])]
    return {i for i in [params.image_id, *(e.image_id for e in examples)] if i is not None}


def above(hits: list[tuple[str, float]], threshold: Threshold | None) -> list[tuple[str, float]]:
    """The hits that reach the threshold (all of them without one)."""
    return hits if threshold is None else [h for h in hits if h[1] >= threshold.value]


def search_excluding(index, query: np.ndarray, skip: set[str], k: int, mask):
    """The index's k best, the `skip` ids (the query's own images) left out (asked for that many more).
    No threshold here: callers apply it with `above`, which also tells them what the closest was."""
    hits = index.search(query, k + len(skip), mask=mask)
    return [h for h in hits if h[0] not in skip][:k]


def _stored(ctx: JobContext, image_id: str, shards: int | None = None) -> np.ndarray:
    vec = ctx.store.stored_vector(ctx.collection, image_id, shards)
    if vec is None:
        raise NotFound(f"image {image_id} is not in collection {ctx.collection!r}", code="image_not_found")
    return vec


def _fetched(ctx: JobContext, url: str) -> np.ndarray:
    assert ctx.sources is not None
    return _embedded(ctx, ctx.sources.get(url))  # FetchError: the job fails with its code


# How much of the negatives' mean is subtracted from the positives' (Rocchio's gamma over beta).
# bench/multi_query.py on the animals photos, "like this cat, unlike this dog": with 0.5 a dog
# shows in the top 10 of 3 % of queries (5 % with the cat alone); subtracting the whole mean (1.0)
# or plain sums (the first version: 1 cat, 3 dogs -> a dog in 14 % of queries) pull the query away
# from the cat it should resemble.
NEGATIVE_SCALE = 0.5


def combine(positive: list[tuple[np.ndarray, float]], negative: list[tuple[np.ndarray, float]]) -> np.ndarray:
    """One query from weighted examples: normalise(mean_w(positive) - NEGATIVE_SCALE * mean_w(negative)).
    Means, not sums: adding a third negative must not outweigh a single positive."""

    def mean(examples: list[tuple[np.ndarray, float]]) -> np.ndarray:
        weights = np.array([w for _, w in examples], dtype=np.float64)
        return (np.stack([v for v, _ in examples]).astype(np.float64) * weights[:, None]).sum(0) / weights.sum()

    total = mean(positive) - (NEGATIVE_SCALE * mean(negative) if negative else 0.0)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        detail = "the examples cancel out: no direction is left to search"
        raise SimsearchError(detail, code="empty_query", status_code=422)
    return (total / norm).astype(np.float32)


def _combined(ctx: JobContext, params: SearchParams) -> np.ndarray:
    def vectors(examples: list[Example]) -> list[tuple[np.ndarray, float]]:
        return [(_stored(ctx, e.image_id) if e.image_id else _fetched(ctx, e.url or ""), e.weight) for e in examples]

    return combine(vectors(params.positive or []), vectors(params.negative or []))


def uploaded(params: SearchParams) -> bool:
    """Whether the query is an image uploaded with the request (stored as the job's upload 0)."""
    return params.image_id is None and params.url is None and not params.positive


def _query_vector(ctx: JobContext, params: SearchParams, shards: int | None = None) -> np.ndarray:
    if params.image_id is not None:
        return _stored(ctx, params.image_id, shards)
    if params.positive:
        return _combined(ctx, params)
    if params.url is not None:
        return _fetched(ctx, params.url)
    data = ctx.store.blobs.get(keys.upload_blob(ctx.job_id, 0))
    if data is None:
        raise SimsearchError("the uploaded query image is gone (expired)", code="upload_expired", status_code=410)
    return _embedded(ctx, data)


def _embedded(ctx: JobContext, data: bytes) -> np.ndarray:
    decoded = decode_image(data, max_pixels=ctx.max_pixels)
    return ctx.embedder.embed(to_model_input(decoded.image, ctx.embedder.input_size)[None])[0]


def search(ctx: JobContext, params: SearchParams) -> SearchResult:
    collection, embedder, stage = ctx.collection, ctx.embedder, ctx.stages.stage
    with stage("sync"):
        replica: Replica | None = ctx.replicas.sync(collection)  # an unsharded collection: shard 0 of 1
    if replica is not None and replica.model != embedder.name:
        raise Conflict(
            f"collection {collection!r} was built with model {replica.model!r}; this worker runs {embedder.name!r}",
            code="model_mismatch",
        )
    shards = replica.shards if replica is not None else None
    with stage("query"):
        query = _query_vector(ctx, params, shards)
    if replica is None or len(replica.index) == 0:
        return SearchResult(matches=[], message="The collection is empty", collection_size=0, model=embedder.name)
    with stage("clustering"):
        clustering = _clustering(ctx.store, replica, collection)
    if clustering is not None and clustering[1].shape[1] != query.shape[0]:
        clustering = None  # computed before a re-embed changed the dimension
    query_cluster = int(np.argmax(clustering[1] @ query)) if clustering else None
    with stage("mask"):
        mask = row_mask(ctx, replica, params, clustering)
    with stage("threshold"):
        threshold = ctx.replicas.threshold(replica, params)
    # Searching by a stored image means "more like this one": the image itself is not a match.
    with stage("search"):
        found = search_excluding(replica.index, query, excluded(params), params.k, mask)
    hits = above(found, threshold)
    with stage("filenames"):
        names = ctx.store.filenames(collection, [i for i, _ in hits], shards)
    matches = [Match(image_id=i, filename=n, similarity=round(s, 6)) for (i, s), n in zip(hits, names, strict=True)]
    closest = None if matches or not found else round(found[0][1], 6)
    message = None if matches else no_match_message(closest, threshold)
    return SearchResult(
        matches=matches,
        message=message,
        threshold=threshold,
        closest=closest,
        collection_size=len(replica.index),
        model=embedder.name,
        query_cluster=query_cluster,
        filter_matches=None if mask is None else int(mask.sum()),
    )


def row_mask(ctx: JobContext, replica: Replica, params: SearchParams, clustering) -> np.ndarray | None:
    """The index rows a search may return (its cluster, its metadata filter); None: every row."""
    mask = None
    if params.cluster is not None:
        if clustering is None:
            raise NotFound(f"collection {ctx.collection!r} has not been clustered", code="no_clusters")
        labels = clustering[2]
        mask = np.fromiter((labels.get(i) == params.cluster for i in replica.index.ids), bool, len(replica.index))
    if params.filter is not None:
        passed = ctx.replicas.filter_mask(ctx.collection, replica, filters.parse(params.filter))
        mask = passed if mask is None else mask & passed
    return mask


def _clustering(store: WorkerStore, replica: Replica, collection: str):
    """The collection's current clustering (id, centroids, labels), loaded once per collection and
    clustering: the shard replicas of one collection on this worker share it."""
    current = store.clustering_id(collection)
    cache = replica.clusterings
    if current is None:
        cache.pop(collection, None)
        return None
    if collection not in cache or cache[collection][0] != current:
        cache[collection] = store.clustering_state(collection)
    return cache[collection]


def run_search_job(ctx: JobContext, served: frozenset[int] | None = None) -> int:
    """Answer the search here, or prepare it for the shards: returns the number of shards to fan
    out to (0 when answered here: an unsharded collection on a worker serving shard 0)."""
    with ctx.stages.stage("mark_running"):
        ctx.jobs.mark_running(ctx.job_id)
    params = ctx.job.params_of(SearchParams)
    with ctx.stages.stage("shards"):
        shards = ctx.store.collection_shards(ctx.collection)
    if shards > 1 or not serves(served, 0):
        return _prepare_fan_out(ctx, params, shards)
    outcome = _outcome(params)
    matches = None
    try:
        result = search(ctx, params)
        result.served_by = ctx.served_by
        matches = len(result.matches)
    except SimsearchError as exc:
        with ctx.stages.stage("finish"):
            end_single(ctx, outcome, exc)
    else:
        with ctx.stages.stage("finish"):
            end_single(ctx, outcome, result.model_dump(mode="json", exclude_none=True))
    finally:
        if uploaded(params):  # a query by stored id, URL or examples left no bytes behind
            with ctx.stages.stage("drop_upload"):
                ctx.store.blobs.delete([keys.upload_blob(ctx.job_id, 0)])
    log.info(
        "answered a search",
        extra={"collection": ctx.collection, "matches": matches, "stages": ctx.stages.rounded()},
    )
    return 0


def _outcome(params: SearchParams) -> ItemOutcome:
    return ItemOutcome(
        index=0, filename=params.filename or "", image_id=params.image_id or "", status=ItemStatus.created
    )


def _fail(ctx: JobContext, params: SearchParams, exc: SimsearchError) -> None:
    end_single(ctx, _outcome(params), exc)


# -- sharded collections: the query is embedded once, here; each shard answers from its replica --
def _prepare_fan_out(ctx: JobContext, params: SearchParams, shards: int) -> int:
    if ctx.store.query(ctx.job_id) is not None:  # redelivered after the query was stored: send again
        return shards
    try:
        model = ctx.store.collection_model(ctx.collection)
        if model is not None and model != ctx.embedder.name:
            raise Conflict(
                f"collection {ctx.collection!r} was built with model {model!r}; this worker runs {ctx.embedder.name!r}",
                code="model_mismatch",
            )
        query = _query_vector(ctx, params)
    except SimsearchError as exc:
        _fail(ctx, params, exc)
        ctx.store.blobs.delete([keys.upload_blob(ctx.job_id, 0)])
        return 0
    ctx.store.put_query(ctx.job_id, query, ctx.jobs.lifecycle.job_ttl_s)
    # Only now: a worker dying before this line leaves the upload for the redelivered task.
    ctx.store.blobs.delete([keys.upload_blob(ctx.job_id, 0)])
    return shards


def run_shard_search(ctx: JobContext, shard: int, shards: int) -> None:
    """One shard's part of a search: its top k from this worker's replica of that shard. The last
    shard to answer merges the answers and ends the job."""
    params = ctx.job.params_of(SearchParams)
    if ctx.job.status.final:  # ended (deadline, failure): shed it
        return
    query = ctx.store.query(ctx.job_id)
    if query is None:  # expired
        return
    if ctx.job.status is JobStatus.queued:  # the API sent the shards directly (search by a stored id)
        ctx.jobs.mark_running(ctx.job_id)
    replica = ctx.replicas.sync(ctx.collection, shard, shards)
    answer = ShardAnswer(served_by=ctx.served_by, embedding=replica.embedding if replica else None)
    if replica is not None and len(replica.index):
        clustering = _clustering(ctx.store, replica, ctx.collection)
        if clustering is not None and clustering[1].shape[1] != query.shape[0]:
            clustering = None
        try:
            mask = row_mask(ctx, replica, params, clustering)
        except SimsearchError as exc:
            _fail(ctx, params, exc)
            return
        if mask is not None:
            answer.passed = int(mask.sum())
        # Each shard calibrates on its own part; the merge applies the highest (worker/search/calibration.py).
        answer.threshold = ctx.replicas.threshold(replica, params)
        found = search_excluding(replica.index, query, excluded(params), params.k, mask)
        answer.hits = above(found, answer.threshold)
        answer.size = len(replica.index)
        if clustering is not None:
            answer.query_cluster = int(np.argmax(clustering[1] @ query))
        answer.best = found[0][1] if found else None
    answered = ctx.store.record_shard(ctx.job_id, shard, answer, ctx.jobs.lifecycle.job_ttl_s)
    if answered == shards:
        finish_fanned_out(ctx, params, shards)


def finish_at_deadline(ctx: JobContext, shards: int) -> None:
    """SHARD_TIMEOUT_S after a fan-out: if some shard has not answered, end the search with what
    the others found (`partial`, naming the missing shards). A no-op if it ended already."""
    view = ctx.jobs.get(ctx.job_id)
    if view is None or view.status.final:
        return
    finish_fanned_out(ctx, ctx.job.params_of(SearchParams), shards)


def finish_fanned_out(ctx: JobContext, params: SearchParams, shards: int) -> None:
    answers = ctx.store.shard_answers(ctx.job_id)
    try:
        merged = fanout.merge(answers, shards, params.k)
    except fanout.ShardsUnavailable as exc:
        _fail(ctx, params, exc)
        ctx.store.drop_fan_out(ctx.job_id)
        return
    threshold, missing = merged.threshold, merged.missing
    hits = above(merged.hits[0], threshold)
    names = ctx.store.filenames(ctx.collection, [i for i, _ in hits])
    matches = [Match(image_id=i, filename=n, similarity=round(s, 6)) for (i, s), n in zip(hits, names, strict=True)]
    size = sum(a.size for a in answers.values())
    message, closest = None, None
    if not matches:
        bests = [a.best for a in answers.values() if a.best is not None]
        closest = round(max(bests), 6) if bests else None
        message = no_match_message(closest, threshold) if size else "The collection is empty"
    if missing:
        note = f"shards {missing} did not answer within the shard timeout; matches are from the others"
        message = f"{message}; {note}" if message else note
    clusters = [a.query_cluster for a in answers.values() if a.query_cluster is not None]
    passed = [a.passed for a in answers.values() if a.passed is not None]
    model = ctx.store.collection_model(ctx.collection) or ""  # a search-only worker has no model
    result = SearchResult(
        matches=matches,
        message=message,
        threshold=threshold,
        closest=closest,
        collection_size=size,
        model=model,
        served_by=",".join(sorted({a.served_by for a in answers.values() if a.served_by})) or None,
        query_cluster=clusters[0] if clusters else None,
        filter_matches=sum(passed) if passed else None,
        # An unsharded collection answered through its shard queue reads like one answered inline.
        shards=shards if shards > 1 or missing else None,
        missing_shards=missing if shards > 1 or missing else None,
    )
    ctx.jobs.record_items(ctx.job_id, [(_outcome(params), None)])
    status = JobStatus.partial if missing else JobStatus.succeeded
    ctx.jobs.finish(ctx.job_id, status, result.model_dump(mode="json", exclude_none=True))
    ctx.store.drop_fan_out(ctx.job_id)  # late shards find the job ended and shed their task
