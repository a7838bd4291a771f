"""Batch search of a sharded collection: a chunk's queries are embedded once (worker.batch_search
stores their vectors), every shard answers all of them from its replica, and the last shard to
answer merges the chunk: each query's k best over the shards, in the order one replica of
everything would give. SHARD_TIMEOUT_S after the fan-out a deadline merges whatever answered, and
the rows it writes name the shards that did not (`missing_shards`), as a single search does.

Merging is idempotent: the deadline and a late last shard may both merge a chunk; results are a
hash by query index (the fuller merge overwrites), progress is recorded once per query.
"""

from __future__ import annotations

from shared import filters, keys
from shared.schemas import ItemOutcome, ItemStatus
from worker.batch_search import batch_params, finish_batch_search, result_rows
from worker.context import JobContext, failed
from worker.searching import merge_hits, merged_threshold, search_excluding


def answer_shard(ctx: JobContext, first: int, shard: int, shards: int) -> None:
    """One shard's answers to a stored chunk of queries; the last shard to answer merges."""
    if ctx.job.status.final:
        return
    chunk = ctx.store.batch_chunk(ctx.job_id, first)
    if chunk is None:  # merged already (the deadline), or expired
        return
    queries, matrix = chunk
    params = batch_params(ctx)
    replica = ctx.replicas.sync(ctx.collection, shard, shards)
    answers: dict[str, list] = {}
    answer: dict = {"answers": answers}
    if replica is not None and len(replica.index):
        mask = None
        if params.filter is not None:
            mask = ctx.replicas.filter_mask(ctx.collection, replica, filters.parse(params.filter))
        # Unfiltered k best: the merge applies the highest shard threshold and says what the closest was.
        if (threshold := ctx.replicas.threshold(replica, params)) is not None:
            answer["threshold"] = threshold.model_dump(exclude_none=True)
        for q, vec in zip(queries, matrix, strict=True):
            own = {q["own"]} if q["own"] else set()
            hits = search_excluding(replica.index, vec, own, params.k, mask)
            answers[str(q["index"])] = [[i, s] for i, s in hits]
    key = keys.batch_answers(ctx.job_id, first)
    answered = ctx.store.record_shard(ctx.job_id, shard, answer, ctx.jobs.lifecycle.job_ttl_s, key)
    if answered == shards:
        merge(ctx, first, shards)


def at_deadline(ctx: JobContext, first: int, shards: int) -> None:
    """SHARD_TIMEOUT_S after the fan-out: merge the chunk if some shard has not answered."""
    if ctx.store.batch_chunk(ctx.job_id, first) is not None:
        merge(ctx, first, shards)


def merge(ctx: JobContext, first: int, shards: int) -> None:
    """Merge the chunk from the answers recorded so far. A shard answering while this runs makes
    the write refuse; then merge again with its answer (answers only grow: at most `shards` tries)."""
    for _ in range(shards + 1):
        merged = _merge_once(ctx, first, shards)
        if merged is None:
            return  # the chunk is gone: merged in full by another task, or failed
        if merged:
            return
    raise RuntimeError(f"batch chunk {first} of job {ctx.job_id} kept changing while being merged")


def _merge_once(ctx: JobContext, first: int, shards: int) -> bool | None:
    """True: merged; False: more answers arrived meanwhile (try again); None: nothing to merge."""
    chunk = ctx.store.batch_chunk(ctx.job_id, first)
    if chunk is None:
        return None
    queries, _ = chunk
    answers = ctx.store.batch_answers(ctx.job_id, first)
    missing = sorted(set(range(shards)) - set(answers))
    by_index = {q["index"]: q for q in queries}
    ttl = ctx.jobs.lifecycle.job_ttl_s
    if not answers:
        if not ctx.store.write_batch_merge(ctx.job_id, first, 0, {}, False, ttl):
            return False
        detail = f"none of the {shards} shards answered within the shard timeout (no live worker serves them?)"
        code = "shards_unavailable"
        outcomes = [failed(i, q["query"], q["image_id"] or "", code, detail) for i, q in by_index.items()]
        ctx.store.drop_batch_chunk(ctx.job_id, first)  # failed for good: a late shard finds nothing to merge
    else:
        k = batch_params(ctx).k
        shard_answers = [a["answers"] for a in answers.values()]
        merged = {index: merge_hits([a.get(str(index), []) for a in shard_answers], k) for index in by_index}
        threshold = merged_threshold([a.get("threshold") for a in answers.values()])
        extra = {"missing_shards": missing} if missing else {}
        rows = result_rows(ctx, by_index, merged, threshold, **extra)
        if not ctx.store.write_batch_merge(ctx.job_id, first, len(answers), rows, bool(missing), ttl):
            return False
        outcomes = [
            (ItemOutcome(index=i, filename=q["query"], image_id=q["image_id"] or "", status=ItemStatus.created), None)
            for i, q in by_index.items()
        ]
        if not missing:
            ctx.store.drop_batch_chunk(ctx.job_id, first)  # else: a late shard may still merge a fuller answer
    if ctx.jobs.record_items(ctx.job_id, outcomes) == 1:
        finish_batch_search(ctx)
    return True
