"""Index a chunk of an index job: prepare each image, embed them in one forward pass, store,
report per item. Pure of Celery: the task hands in a `JobContext`.

Each image is reduced to what is kept (model input, rendition) as soon as it is decoded, so a
chunk of large images holds one full-size decode per preparer thread (PREPARE_THREADS), not 32.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import wait
from dataclasses import dataclass

import numpy as np
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from shared import keys
from shared.errors import InvalidImage, SimsearchError
from shared.imaging import PreparedImage, content_id, prepare_image
from shared.jobs import final_status
from shared.schemas import ImageRecord, ItemError, ItemStatus, JobInput, utcnow
from worker.context import JobContext, Outcome, failed, failed_item, ok
from worker.store import NewImage

log = logging.getLogger(__name__)

MAX_ITEM_ATTEMPTS = 2
# Not an item's fault: they end the task (retried, or its remaining items failed by the task).
PASS_THROUGH = (RedisConnectionError, RedisTimeoutError, SoftTimeLimitExceeded)
STATUS_OF_FLAG = {1: ItemStatus.created, 0: ItemStatus.existing, 2: ItemStatus.deleted}


@dataclass(frozen=True)
class Pending:
    index: int
    input: JobInput
    image: PreparedImage | None  # None: already in the collection, to be confirmed atomically


def prepare_item(ctx: JobContext, index: int, inp: JobInput, data: bytes | None) -> Pending | Outcome:
    if data is None:
        return failed(index, inp.filename, inp.image_id, "upload_expired", "the uploaded bytes are gone")
    try:
        return Pending(index, inp, prepare_image(data, ctx.embedder.input_size, max_pixels=ctx.max_pixels))
    except InvalidImage as exc:
        return failed(index, inp.filename, inp.image_id, exc.code, exc.detail)
    except PASS_THROUGH:
        raise
    except Exception as exc:  # a decoder bug must fail this item, not the batch
        log.exception("unexpected error decoding item %d (%s)", index, inp.filename)
        return failed(index, inp.filename, inp.image_id, "decode_error", f"{type(exc).__name__}: {exc}")


def _record(p: Pending, now: str, job_id: str) -> ImageRecord:
    img = p.image
    return ImageRecord(
        image_id=p.input.image_id,
        filename=p.input.filename,
        format=img.format if img else "",
        width=img.width if img else 0,
        height=img.height if img else 0,
        size=p.input.size,
        metadata=p.input.metadata,
        created_at=now,
        job_id=job_id,
    )


def _embed_and_store(ctx: JobContext, pending: list[Pending]) -> list[Outcome]:
    new = [p for p in pending if p.image is not None]
    now = utcnow()
    records = [_record(p, now, ctx.job_id) for p in pending]
    renditions = [p.image.rendition if p.image else b"" for p in pending]
    # The renditions go to the blob store while the forward pass runs (claim check: still before
    # any record names them, since storing waits for them).
    writing = ctx.store.write_renditions(
        ctx.collection, [NewImage(r, None, b) for r, b in zip(records, renditions, strict=True)]
    )
    vectors: list[np.ndarray | None] = [None] * len(pending)
    seconds = 0.0
    try:
        if new:
            started = time.perf_counter()
            embedded = iter(ctx.embedder.embed(np.stack([p.image.pixels for p in new])))
            seconds = time.perf_counter() - started
            ctx.stages.add("forward", seconds)
            vectors = [next(embedded) if p.image is not None else None for p in pending]
    except BaseException:
        ctx.store.discard_renditions(writing)
        raise
    images = [NewImage(r, vec, b) for r, vec, b in zip(records, vectors, renditions, strict=True)]
    with ctx.stages.stage("renditions_wait"):
        wait([writing])  # add_images reads (and raises) its result
    with ctx.stages.stage("store"):
        flags = ctx.store.add_images(ctx.collection, ctx.embedding, ctx.job.seq, images, writing)
    if new:
        ctx.store.record_embedding(len(new), seconds, flags.count(1))
    return [ok(p.index, p.input, STATUS_OF_FLAG[flag]) for p, flag in zip(pending, flags, strict=True)]


def guarded(pending: list[Pending], step: Callable[[], list[Outcome]]) -> list[Outcome]:
    """Run the batch step; if it raises, every item of the batch fails with the reason (logged)."""
    try:
        return step()
    except SimsearchError as exc:
        return [failed(p.index, p.input.filename, p.input.image_id, exc.code, exc.detail) for p in pending]
    except PASS_THROUGH:
        raise
    except Exception as exc:
        log.exception("a batch of %d items failed", len(pending))
        detail = f"{type(exc).__name__}: {exc}"
        return [failed(p.index, p.input.filename, p.input.image_id, "embedding_error", detail) for p in pending]


def fetch_urls(ctx: JobContext, indices: list[int], inputs: list[JobInput | ItemError]) -> dict[int, bytes]:
    """Fetch the chunk's URL items at once (concurrently). Each input fetched now carries its
    image id and size; one that failed is rejected with the reason (in place, in `inputs`)."""
    todo = [k for k, inp in enumerate(inputs) if isinstance(inp, JobInput) and inp.url and inp.rejected is None]
    if not todo:
        return {}
    assert ctx.sources is not None
    fetched = ctx.sources.get_many([inputs[k].url for k in todo])  # type: ignore[union-attr,misc]
    data: dict[int, bytes] = {}
    for k, got in zip(todo, fetched, strict=True):
        inp = inputs[k]
        assert isinstance(inp, JobInput)
        if isinstance(got, bytes):
            inputs[k] = inp.model_copy(update={"image_id": content_id(got), "size": len(got)})
            data[indices[k]] = got
        else:
            error = ItemError(index=indices[k], filename=inp.filename, error=got.code, detail=got.detail)
            inputs[k] = inp.model_copy(update={"rejected": error})
    return data


def prepare_all(
    ctx: JobContext, todo: list[tuple[int, JobInput]], fetched: dict[int, bytes]
) -> list[Pending | Outcome]:
    """Read and reduce the items, side by side on the worker's preparer threads (in order). Each
    thread reads its item's upload just before decoding it, so a chunk holds one raw upload and one
    full-size decode per thread, not the whole chunk's bytes."""
    steps = [(index, inp, fetched.pop(index, None) if inp.url else None) for index, inp in todo]

    def load_and_prepare(step: tuple[int, JobInput, bytes | None]) -> Pending | Outcome:
        index, inp, data = step
        if not inp.url:
            data = ctx.store.blobs.get(keys.upload_blob(ctx.job_id, index))
        return prepare_item(ctx, index, inp, data)

    if ctx.preparers is None or len(steps) < 2:
        return [load_and_prepare(step) for step in steps]
    return list(ctx.preparers.map(load_and_prepare, steps))


def _process(ctx: JobContext, indices: list[int]) -> int:
    """Prepare, embed (one forward pass) and store these items, then record them. Returns the
    job's completeness flag from `record_items`."""
    with ctx.stages.stage("inputs"):
        all_inputs = ctx.jobs.inputs(ctx.job_id, indices)
    outcomes: list[Outcome] = []
    pending: list[Pending] = []
    # URL items are fetched a window at a time and reduced to model input before the next window:
    # a chunk never holds more than a window of raw downloads.
    urls = any(isinstance(inp, JobInput) and inp.url for inp in all_inputs)
    window = ctx.sources.concurrency if urls and ctx.sources is not None else len(indices)
    for start in range(0, len(indices), window):
        some, inputs = indices[start : start + window], all_inputs[start : start + window]
        with ctx.stages.stage("fetch_urls"):
            fetched = fetch_urls(ctx, some, inputs)
        present = [inp.image_id for inp in inputs if isinstance(inp, JobInput)]
        # Only a hint to skip the work: whether an image is new, existing or deleted is decided
        # atomically when the chunk is stored.
        with ctx.stages.stage("existing"):
            existing = ctx.store.existing_ids(ctx.collection, present)
        todo: list[tuple[int, JobInput]] = []
        for index, inp in zip(some, inputs, strict=True):
            if isinstance(inp, ItemError):
                outcomes.append(failed_item(index, None, inp.error, inp.detail))
            elif inp.rejected is not None:
                outcomes.append(failed_item(index, inp, inp.rejected.error, inp.rejected.detail))
            elif inp.image_id in existing:
                pending.append(Pending(index, inp, None))
            else:
                todo.append((index, inp))
        with ctx.stages.stage("prepare"):
            for step in prepare_all(ctx, todo, fetched):
                (pending if isinstance(step, Pending) else outcomes).append(step)
    pending.sort(key=lambda p: p.index)  # the chunk's rows in item order, whichever path they took
    if pending:
        outcomes += guarded(pending, lambda: _embed_and_store(ctx, pending))
    with ctx.stages.stage("record"):
        complete = ctx.jobs.record_items(ctx.job_id, outcomes)
    with ctx.stages.stage("drop_uploads"):
        drop_uploads(ctx, indices)
    return complete


def drop_uploads(ctx: JobContext, indices: list[int]) -> None:
    """Processed (or failed for good): the uploaded bytes are no longer needed."""
    ctx.store.blobs.delete([keys.upload_blob(ctx.job_id, i) for i in indices])


def index_chunk(ctx: JobContext, indices: list[int]) -> None:
    ctx.jobs.mark_running(ctx.job_id)
    started = time.perf_counter()
    attempt = ctx.jobs.count_attempt(ctx.job_id, f"chunk:{indices[0]}")
    complete = _process(ctx, indices) if attempt == 1 else _one_at_a_time(ctx, indices)
    if complete == 1:
        with ctx.stages.stage("finish"):
            finish_index_job(ctx)
    log.info(
        "indexed a chunk",
        extra={
            "collection": ctx.collection,
            "items": len(indices),
            "attempt": attempt,
            "seconds": round(time.perf_counter() - started, 4),
            "stages": ctx.stages.rounded(),
        },
    )


def _one_at_a_time(ctx: JobContext, indices: list[int]) -> int:
    """A redelivered chunk: its last run died (or the message came twice). Items are processed and
    recorded singly, each with its own attempt count, so an image that kills the worker every time
    fails alone after MAX_ITEM_ATTEMPTS instead of taking its chunk down forever."""
    complete = 0
    for index in ctx.jobs.unrecorded(ctx.job_id, indices):
        tries = ctx.jobs.count_attempt(ctx.job_id, f"item:{index}")
        if tries > MAX_ITEM_ATTEMPTS:
            inp = ctx.jobs.inputs(ctx.job_id, [index])[0]
            detail = f"processing this image stopped the worker {tries - 1} times"
            complete = ctx.jobs.record_items(ctx.job_id, [failed_item(index, inp, "worker_crashed", detail)])
            drop_uploads(ctx, [index])
        else:
            complete = _process(ctx, [index])
    # Nothing left to do here (all recorded before): say whether the job is complete all the same.
    return complete or ctx.jobs.record_items(ctx.job_id, [])


def finish_index_job(ctx: JobContext) -> None:
    total, failures = ctx.jobs.counts(ctx.job_id)
    ctx.jobs.finish(ctx.job_id, final_status(total, failures), ctx.jobs.index_result(ctx.job_id))
