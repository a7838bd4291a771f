"""The duplicates job: near-duplicate groups of a whole collection, read from Redis (sharded or
not), reported largest first."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import numpy as np

from shared import vectors
from shared.errors import SimsearchError
from shared.jobs.kinds import DuplicatesParams
from shared.schemas import ItemOutcome, ItemStatus
from worker.analysis.duplicates import duplicate_groups
from worker.context import JobContext, end_single
from worker.model.threads import all_cores

log = logging.getLogger(__name__)

SCAN_BATCH = 2000


def _blocks(ctx: JobContext, dim: int) -> Iterator[tuple[list[str], np.ndarray]]:
    for shard in range(ctx.store.collection_shards(ctx.collection)):
        cursor = 0
        while True:
            cursor, chunk = ctx.store.scan_vectors(ctx.collection, shard, cursor, SCAN_BATCH)
            fresh = {(k.decode() if isinstance(k, bytes) else k): v for k, v in chunk.items() if vectors.fits(v, dim)}
            if fresh:
                yield list(fresh), vectors.decode_many(list(fresh.values()), dim)
            if cursor == 0:
                break


def run_duplicates_job(ctx: JobContext) -> None:
    params, jobs, job_id = ctx.job.params_of(DuplicatesParams), ctx.jobs, ctx.job_id
    jobs.mark_running(job_id)
    outcome = ItemOutcome(index=0, filename="", image_id="", status=ItemStatus.created)
    started = time.perf_counter()
    try:
        dim = ctx.store.header(ctx.collection).dim
        if not dim:
            raise SimsearchError(f"collection {ctx.collection!r} is empty", code="empty_collection", status_code=409)
        with all_cores():
            read, groups = duplicate_groups(_blocks(ctx, dim), dim, params.min_similarity, params.k)
    except SimsearchError as exc:
        end_single(ctx, outcome, exc)
        return
    shown = groups[: params.max_groups]
    names = ctx.store.filenames(ctx.collection, [m for _, members in shown for m, _ in members])
    named = iter(names)
    result = {
        "min_similarity": params.min_similarity,
        "images": read,
        "group_count": len(groups),
        "images_in_groups": sum(len(m) for _, m in groups),
        "seconds": round(time.perf_counter() - started, 2),
        "groups": [
            {
                "representative": rep,
                "size": len(members),
                "members": [{"image_id": m, "filename": next(named), "similarity": s} for m, s in members],
            }
            for rep, members in shown
        ],
    }
    log.info("found duplicate groups", extra={"collection": ctx.collection, "groups": len(groups), "images": read})
    end_single(ctx, outcome, result)
