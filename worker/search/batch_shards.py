"""Batch search of a sharded collection: a chunk's queries are embedded once (worker.search.batch_search
stores their vectors), every shard answers all of them from its replica, and the last shard to
answer merges the chunk: each query's k best over the shards, in the order one replica of
everything would give. SHARD_TIMEOUT_S after the fan-out a deadline merges whatever answered, and
the rows it writes name the shards that did not (`missing_shards`), as a single search does.

Merging is idempotent: the deadline and a late last shard may both merge a chunk; results are a
hash by query index (the fuller merge overwrites), progress is recorded once per query.
"""

from __future__ import annotations

from shared import fanout, filters, keys
from shared.fanout import BatchShardAnswer
from shared.schemas import ItemOutcome, ItemStatus
from worker.context import JobContext, failed
from worker.search.batch_search import batch_params, finish_batch_search, result_rows
from worker.search.searching import search_excluding


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
    answer = BatchShardAnswer(embedding=replica.embedding if replica else None)
    if replica is not None and len(replica.index):
        mask = None
        if params.filter is not None:
            mask = ctx.replicas.filter_mask(ctx.collection, replica, filters.parse(params.filter))
        # Unfiltered k best: the merge applies the highest shard threshold and says what the closest was.
        answer.threshold = ctx.replicas.threshold(replica, params)
        for q, vec in zip(queries, matrix, strict=True):
            own = {q["own"]} if q["own"] else set()
            answer.answers[str(q["index"])] = search_excluding(replica.index, vec, own, params.k, mask)
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
    by_index = {q["index"]: q for q in queries}
    ttl = ctx.jobs.lifecycle.job_ttl_s
    try:
        merged = fanout.merge(answers, shards, batch_params(ctx).k, by_index)
    except fanout.ShardsUnavailable as exc:  # none answered, or answers of two embeddings
        if not ctx.store.write_batch_merge(ctx.job_id, first, len(answers), {}, False, ttl):
            return False
        outcomes = [failed(i, q["query"], q["image_id"] or "", exc.code, exc.detail) for i, q in by_index.items()]
        ctx.store.drop_batch_chunk(ctx.job_id, first)  # failed for good: a late shard finds nothing to merge
    else:
        extra = {"missing_shards": merged.missing} if merged.missing else {}
        rows = result_rows(ctx, by_index, merged.hits, merged.threshold, **extra)
        if not ctx.store.write_batch_merge(ctx.job_id, first, len(answers), rows, bool(merged.missing), ttl):
            return False
        outcomes = [
            (ItemOutcome(index=i, filename=q["query"], image_id=q["image_id"] or "", status=ItemStatus.created), None)
            for i, q in by_index.items()
        ]
        if not merged.missing:
            ctx.store.drop_batch_chunk(ctx.job_id, first)  # else: a late shard may still merge a fuller answer
    if ctx.jobs.record_items(ctx.job_id, outcomes) == 1:
        finish_batch_search(ctx)
    return True
