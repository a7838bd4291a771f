"""A chunk of a batch search: embed its uploaded queries in one forward pass (stored ones need
none), search each against this worker's replica, store each query's matches, record progress.

Results live in a hash per job (query index -> JSON), read a page at a time by
`GET /v1/jobs/{id}/results`: a million-row result is never one JSON body.
"""

from __future__ import annotations

import json

import numpy as np

from shared import filters, keys
from shared.errors import Conflict, SimsearchError
from shared.jobs import final_status
from shared.jobs.kinds import BatchSearchParams
from shared.schemas import ItemError, ItemStatus, JobInput, JobStatus, SearchParams, Threshold
from worker.context import JobContext, Outcome, failed_item, ok
from worker.ingest.indexing import PASS_THROUGH, Pending, drop_uploads, prepare_item
from worker.search.calibration import no_match_message
from worker.search.searching import above, search_excluding


def _vectors(ctx: JobContext, indices: list[int], inputs: list) -> tuple[dict[int, np.ndarray], list[Outcome]]:
    """Each query's vector by item index, and the items that failed on the way."""
    out: dict[int, np.ndarray] = {}
    failures: list[Outcome] = []
    pending: list[Pending] = []
    for index, inp in zip(indices, inputs, strict=True):
        if isinstance(inp, ItemError):
            failures.append(failed_item(index, None, inp.error, inp.detail))
        elif inp.rejected is not None:
            failures.append(failed_item(index, inp, inp.rejected.error, inp.rejected.detail))
        elif inp.stored:
            vec = ctx.store.stored_vector(ctx.collection, inp.image_id)
            if vec is None:
                failures.append(failed_item(index, inp, "image_not_found", "not in the collection (deleted?)"))
            else:
                out[index] = vec
        else:
            step = prepare_item(ctx, index, inp, ctx.store.blobs.get(keys.upload_blob(ctx.job_id, index)))
            (pending.append(step) if isinstance(step, Pending) else failures.append(step))
    if pending:
        embedded = ctx.embedder.embed(np.stack([p.image.pixels for p in pending]))  # type: ignore[union-attr]
        out.update({p.index: vec for p, vec in zip(pending, embedded, strict=True)})
    return out, failures


def batch_params(ctx: JobContext) -> SearchParams:
    return ctx.job.params_of(BatchSearchParams).search()


def search_batch_chunk(ctx: JobContext, indices: list[int]) -> int:
    """Answer a chunk of queries here; for a sharded collection store them for the shards and
    return how many shards to send them to (0: answered here)."""
    ctx.jobs.mark_running(ctx.job_id)
    params = batch_params(ctx)
    shards = ctx.store.collection_shards(ctx.collection)
    if shards > 1 and ctx.store.batch_chunk(ctx.job_id, indices[0]) is not None:
        return shards  # redelivered after the queries were stored: send them again
    inputs = ctx.jobs.inputs(ctx.job_id, indices)
    replica = ctx.replicas.sync(ctx.collection) if shards == 1 else None
    model = replica.model if replica is not None else ctx.store.collection_model(ctx.collection)
    if model is not None and model != ctx.embedder.name:
        raise Conflict(f"collection {ctx.collection!r} was built with model {model!r}", code="model_mismatch")
    try:
        vectors, outcomes = _vectors(ctx, indices, inputs)
    except PASS_THROUGH:
        raise
    except SimsearchError as exc:  # the forward pass failed: every query of the chunk fails with it
        pairs = zip(indices, inputs, strict=True)
        vectors, outcomes = {}, [failed_item(i, inp, exc.code, exc.detail) for i, inp in pairs]
    by_index = dict(zip(indices, inputs, strict=True))
    queries = {index: query_row(index, by_index[index]) for index in vectors}  # type: ignore[arg-type]
    if shards > 1 and vectors:
        # The failures first: once the chunk is stored, a redelivered task only sends it again,
        # so a failure recorded after it could be lost with a worker dying in between.
        if outcomes:
            ctx.jobs.record_items(ctx.job_id, outcomes)  # not complete: the chunk's queries are owed
        matrix = np.stack(list(vectors.values()))
        ctx.store.put_batch_chunk(ctx.job_id, indices[0], list(queries.values()), matrix, ctx.jobs.lifecycle.job_ttl_s)
        drop_uploads(ctx, indices)  # only now: a redelivery before the line above embeds them again
        return shards
    # One mask for the chunk: every query has the same filter.
    mask = None
    if replica is not None and params.filter is not None:
        mask = ctx.replicas.filter_mask(ctx.collection, replica, filters.parse(params.filter))
    threshold = ctx.replicas.threshold(replica, params) if replica is not None else None
    answers: dict[int, list[tuple[str, float]]] = {}
    for index, vec in vectors.items():
        own = {queries[index]["own"]} if queries[index]["own"] else set()
        answers[index] = search_excluding(replica.index, vec, own, params.k, mask) if replica else []
    rows = result_rows(ctx, queries, answers, threshold)
    outcomes += [ok(index, by_index[index], ItemStatus.created) for index in answers]  # type: ignore[arg-type]
    if rows:
        ctx.store.put_results(ctx.job_id, rows, ctx.jobs.lifecycle.job_ttl_s)
    record(ctx, outcomes, indices)
    return 0


def query_row(index: int, inp: JobInput) -> dict:
    """Who a query is, for its result row; `own`: a stored query is not among its own matches."""
    return {
        "index": index,
        "query": inp.filename,
        "image_id": inp.image_id or None,
        "own": inp.image_id if inp.stored else None,
    }


def result_rows(
    ctx: JobContext,
    queries: dict[int, dict],
    answers: dict[int, list[tuple[str, float]]],
    threshold: Threshold | None,
    **extra,
) -> dict[str, str]:
    """Each query's row: its matches that reach the threshold, or the no-match message, as a search
    answers (`answers` are the k best before the threshold)."""
    kept = {index: above(found, threshold) for index, found in answers.items()}
    names = iter(ctx.store.filenames(ctx.collection, [i for hits in kept.values() for i, _ in hits]))
    said = {"threshold": threshold.model_dump(exclude_none=True)} if threshold else {}
    rows = {}
    for index, hits in kept.items():
        q = queries[index]
        row = {"query": q["query"], "image_id": q["image_id"], "matches": [], **said, **extra}
        row["matches"] = [{"image_id": i, "filename": next(names), "similarity": round(s, 6)} for i, s in hits]
        if not hits and (found := answers[index]):
            row["closest"] = round(found[0][1], 6)
        if not hits:
            row["message"] = no_match_message(row.get("closest"), threshold)
        rows[str(index)] = json.dumps(row)
    return rows


def record(ctx: JobContext, outcomes: list[Outcome], indices: list[int]) -> None:
    """Record outcomes, drop the chunk's uploads, and end the job if that completed it."""
    complete = ctx.jobs.record_items(ctx.job_id, outcomes) if outcomes else 0
    drop_uploads(ctx, indices)
    if complete == 1:
        finish_batch_search(ctx)


def finish_batch_search(ctx: JobContext) -> None:
    total, failures = ctx.jobs.counts(ctx.job_id)
    summary = {"queries": total, "failed": failures, "results_url": f"/v1/jobs/{ctx.job_id}/results"}
    status = final_status(total, failures)
    # A sharded collection whose shard had no live worker: some rows lack that shard's matches.
    if (partial := ctx.store.partial_chunks(ctx.job_id)) and status is JobStatus.succeeded:
        status = JobStatus.partial
        summary["chunks_missing_shards"] = partial
    if owner := ctx.job.params.owner:
        ctx.store.settle_results(ctx.job_id, owner, ctx.jobs.lifecycle.job_ttl_s)
    ctx.jobs.finish(ctx.job_id, status, summary)
