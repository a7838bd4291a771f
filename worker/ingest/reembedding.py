"""Re-embed a collection with the model this worker runs, from the stored renditions.

New vectors are staged beside the live ones; the last chunk swaps them in at once, so searches
never see a mix of two models' vectors. Images added while the job runs are staged by the adding
worker when it runs the target embedding; any other image without a staged vector (added by
another embedding, or whose chunk failed for a passing reason) is embedded by the finisher before
the swap, which the swap script refuses while a live image lacks a staged vector. Only images
whose rendition cannot be decoded leave the collection. A finisher that does not run the target
embedding never stages: it swaps only if nothing is missing, else it gives the re-embed up and
the collection keeps its old vectors, whole.
"""

from __future__ import annotations

import logging

import numpy as np

from shared import keys
from shared.jobs import final_status
from shared.jobs.kinds import ReembedParams
from shared.schemas import ItemStatus, JobInput, JobStatus
from worker.context import JobContext, Outcome, failed_item, ok
from worker.ingest.indexing import Pending, guarded, prepare_item
from worker.store import Embedding

log = logging.getLogger(__name__)

MAX_SWAP_ROUNDS = 20
BATCH = 32


def target_embedding(ctx: JobContext) -> Embedding:
    params = ctx.job.params_of(ReembedParams)
    return Embedding(params.model, params.embedding or ctx.embedding.id, params.dim)


def _embed_and_stage(ctx: JobContext, pending: list[Pending]) -> list[Outcome]:
    vectors = ctx.embedder.embed(np.stack([p.image.pixels for p in pending]))
    ctx.store.stage_vectors(ctx.collection, ctx.job_id, [p.input.image_id for p in pending], vectors)
    return [ok(p.index, p.input, ItemStatus.created) for p in pending]


def reembed_chunk(ctx: JobContext, indices: list[int]) -> None:
    ctx.jobs.mark_running(ctx.job_id)
    inputs = ctx.jobs.inputs(ctx.job_id, indices)
    target = target_embedding(ctx)
    outcomes: list[Outcome] = []
    pending: list[Pending] = []
    if target.id != ctx.embedding.id:
        detail = f"this job re-embeds with {target.id} but this worker runs {ctx.embedding.id}"
        outcomes = [failed_item(i, inp, "model_mismatch", detail) for i, inp in zip(indices, inputs, strict=True)]
    else:
        present = [(i, inp) for i, inp in zip(indices, inputs, strict=True) if isinstance(inp, JobInput)]
        unreadable = [(i, inp) for i, inp in zip(indices, inputs, strict=True) if not isinstance(inp, JobInput)]
        outcomes += [failed_item(i, None, inp.error, inp.detail) for i, inp in unreadable]
        thumbs = ctx.store.renditions(ctx.collection, [inp.image_id for _, inp in present])
        for (index, inp), data in zip(present, thumbs, strict=True):
            if data is None:  # deleted since the job started
                outcomes.append(ok(index, inp, ItemStatus.skipped))
                continue
            step = prepare_item(ctx, index, inp, data)
            (pending if isinstance(step, Pending) else outcomes).append(step)
        if pending:
            outcomes += guarded(pending, lambda: _embed_and_stage(ctx, pending))
    if ctx.jobs.record_items(ctx.job_id, outcomes) == 1:
        finish_reembed_job(ctx)


def _stage_missing(ctx: JobContext, ids: list[str]) -> tuple[int, list[str]]:
    """Embed images that have no staged vector yet. Returns (staged, ids whose rendition is
    unreadable: those, and only those, leave the collection)."""
    staged, broken = 0, []
    for start in range(0, len(ids), BATCH):
        chunk = ids[start : start + BATCH]
        pending: list[Pending] = []
        for image_id, data in zip(chunk, ctx.store.renditions(ctx.collection, chunk), strict=True):
            if data is None:
                continue  # deleted meanwhile
            step = prepare_item(ctx, 0, JobInput(filename="", image_id=image_id, size=0), data)
            if isinstance(step, Pending):
                pending.append(step)
            else:
                broken.append(image_id)
        if pending:
            vectors = ctx.embedder.embed(np.stack([p.image.pixels for p in pending]))
            ids_ = [p.input.image_id for p in pending]
            staged += max(0, ctx.store.stage_vectors(ctx.collection, ctx.job_id, ids_, vectors))
    return staged, broken


def finish_reembed_job(ctx: JobContext) -> None:
    total, failures = ctx.jobs.counts(ctx.job_id)
    target = target_embedding(ctx)
    result: dict = {"model": target.model, "dimension": target.dim, "reembedded": total - failures}
    try:
        outcome = _swap_when_complete(ctx, target, may_stage=target.id == ctx.embedding.id)
    except BaseException:
        # Whatever stopped us, the collection must not stay marked (staging new adds) -- unless its
        # shards have begun to swap: then only a rerun of this finisher may end it (the watchdog
        # re-drives a quiet re-embed), never an abort that would leave it half swapped.
        ctx.store.abort_reembed(ctx.collection, ctx.job_id)
        raise
    if isinstance(outcome, str):
        if ctx.store.abort_reembed(ctx.collection, ctx.job_id) == -1:
            log.warning("re-embed %s: %s during its swap; left for a rerun to finish", ctx.job_id, outcome)
            return
        result.update(error=outcome, detail=_WHY[outcome])
        ctx.jobs.finish(ctx.job_id, JobStatus.failed, result)
        return
    dropped, recovered = outcome
    result.update(dropped=sorted(dropped), added_during=recovered)
    ctx.jobs.finish(ctx.job_id, final_status(total, failures) if dropped else JobStatus.succeeded, result)


_WHY = {
    "superseded": "another re-embed of this collection started",
    "not_converged": "images kept arriving faster than they could be re-embedded",
    "wrong_embedding": "the job ended on a worker that runs another embedding; the collection keeps its "
    "vectors: run the re-embed again once every worker runs the new model",
}


def _swap_when_complete(ctx: JobContext, target: Embedding, may_stage: bool) -> tuple[list[str], int] | str:
    """Swap once every live image has a staged vector. Returns (dropped, images embedded here) or
    the reason the re-embed was given up."""
    dropped: list[str] = []
    broken: list[str] = []
    broken_blobs: list[str] = []
    recovered = 0
    for _ in range(MAX_SWAP_ROUNDS):
        swap = ctx.store.swap_vectors(ctx.collection, ctx.job_id, target, broken)
        dropped += swap.dropped
        if swap.dropped:  # their records are gone: so go their renditions
            ctx.store.blobs.delete([k for k in broken_blobs if keys.rendition_image_id(k) in swap.dropped])
        if swap.swapped:
            return dropped, recovered
        if not swap.ours:
            return "superseded"
        if not may_stage:
            return "wrong_embedding"
        staged, newly_broken = _stage_missing(ctx, ctx.store.unstaged_ids(ctx.collection, ctx.job_id))
        recovered += staged
        broken = newly_broken
        broken_blobs = ctx.store.rendition_keys(ctx.collection, broken)
    return "not_converged"
