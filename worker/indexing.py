"""Index a chunk of an index job: decode, embed in one forward pass, store, report per item.

Pure of Celery: the task passes in the store and embedder, so this runs in tests as it is.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from shared.errors import InvalidImage, SimsearchError
from shared.imaging import DecodedImage, decode_image, rendition, to_model_input
from shared.jobs import final_status
from shared.models.base import Embedder
from shared.schemas import ImageRecord, ItemError, ItemOutcome, ItemStatus, JobInput, utcnow
from worker.store import NewImage, WorkerStore

log = logging.getLogger(__name__)

Outcome = tuple[ItemOutcome, ItemError | None]


@dataclass(frozen=True)
class Pending:
    index: int
    input: JobInput
    decoded: DecodedImage
    data: bytes


def failed(index: int, filename: str, image_id: str, code: str, detail: str) -> Outcome:
    outcome = ItemOutcome(index=index, filename=filename, image_id=image_id, status=ItemStatus.failed)
    return outcome, ItemError(index=index, filename=filename, image_id=image_id, error=code, detail=detail)


def ok(index: int, inp: JobInput, status: ItemStatus) -> Outcome:
    return ItemOutcome(index=index, filename=inp.filename, image_id=inp.image_id, status=status), None


def decode_item(index: int, inp: JobInput, data: bytes | None, max_pixels: int) -> Pending | Outcome:
    if data is None:
        return failed(index, inp.filename, inp.image_id, "upload_expired", "the uploaded bytes are gone")
    try:
        return Pending(index, inp, decode_image(data, max_pixels=max_pixels), data)
    except InvalidImage as exc:
        return failed(index, inp.filename, inp.image_id, exc.code, exc.detail)
    except Exception as exc:  # a decoder bug must fail this item, not the batch
        log.exception("unexpected error decoding item %d (%s)", index, inp.filename)
        return failed(index, inp.filename, inp.image_id, "decode_error", f"{type(exc).__name__}: {exc}")


def _embed_and_store(store: WorkerStore, embedder: Embedder, collection: str, pending: list[Pending]) -> list[Outcome]:
    batch = np.stack([to_model_input(p.decoded.image, embedder.input_size) for p in pending])
    started = time.perf_counter()
    vectors = embedder.embed(batch)
    seconds = time.perf_counter() - started
    now = utcnow()
    new_images = [
        NewImage(
            record=ImageRecord(
                image_id=p.input.image_id,
                filename=p.input.filename,
                format=p.decoded.format,
                width=p.decoded.width,
                height=p.decoded.height,
                size=p.input.size,
                metadata=p.input.metadata,
                created_at=now,
            ),
            vector=vec,
            thumbnail=rendition(p.data, p.decoded),
        )
        for p, vec in zip(pending, vectors, strict=True)
    ]
    created = store.add_images(collection, embedder.name, embedder.dim, new_images)
    store.record_embedding(len(pending), seconds, sum(created))
    return [
        ok(p.index, p.input, ItemStatus.created if new else ItemStatus.existing)
        for p, new in zip(pending, created, strict=True)
    ]


def guarded(pending: list[Pending], step: Callable[[], list[Outcome]]) -> list[Outcome]:
    """Run the batch step; if it raises, every item of the batch fails with the reason (logged)."""
    try:
        return step()
    except SimsearchError as exc:
        return [failed(p.index, p.input.filename, p.input.image_id, exc.code, exc.detail) for p in pending]
    except Exception as exc:
        log.exception("a batch of %d items failed", len(pending))
        detail = f"{type(exc).__name__}: {exc}"
        return [failed(p.index, p.input.filename, p.input.image_id, "embedding_error", detail) for p in pending]


ItemHook = Callable[[JobInput], None]
MAX_ITEM_ATTEMPTS = 2


def _process(
    store: WorkerStore,
    embedder: Embedder,
    job_id: str,
    collection: str,
    indices: list[int],
    max_pixels: int,
    before_item: ItemHook | None,
) -> int:
    """Decode, embed (one forward pass) and store these items, then record them. Returns the
    job's completeness flag from `record_items`."""
    inputs = store.inputs(job_id, indices)
    existing = store.existing_ids(collection, [i.image_id for i in inputs if i is not None])
    outcomes: list[Outcome] = []
    pending: list[Pending] = []
    for index, inp in zip(indices, inputs, strict=True):
        if inp is None:
            outcomes.append(failed(index, "", "", "missing_input", "the job's record of this item is gone"))
        elif inp.rejected is not None:
            outcomes.append(failed(index, inp.filename, inp.image_id, inp.rejected.error, inp.rejected.detail))
        elif inp.image_id in existing:
            outcomes.append(ok(index, inp, ItemStatus.existing))
        else:
            if before_item is not None:
                before_item(inp)
            step = decode_item(index, inp, store.upload(job_id, index), max_pixels)
            (pending if isinstance(step, Pending) else outcomes).append(step)
    if pending:
        outcomes += guarded(pending, lambda: _embed_and_store(store, embedder, collection, pending))
    complete = store.record_items(job_id, outcomes)
    store.drop_uploads(job_id, indices)
    return complete


def index_chunk(
    store: WorkerStore,
    embedder: Embedder,
    job_id: str,
    collection: str,
    indices: list[int],
    max_pixels: int,
    before_item: ItemHook | None = None,
) -> None:
    store.mark_running(job_id)
    started = time.perf_counter()
    attempt = store.count_attempt(job_id, f"chunk:{indices[0]}")
    if attempt == 1:
        complete = _process(store, embedder, job_id, collection, indices, max_pixels, before_item)
    else:
        complete = _one_at_a_time(store, embedder, job_id, collection, indices, max_pixels, before_item)
    log.info(
        "indexed a chunk",
        extra={
            "collection": collection,
            "items": len(indices),
            "attempt": attempt,
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    if complete == 1:
        finish_index_job(store, job_id)


def _one_at_a_time(
    store: WorkerStore,
    embedder: Embedder,
    job_id: str,
    collection: str,
    indices: list[int],
    max_pixels: int,
    before_item: ItemHook | None,
) -> int:
    """A redelivered chunk: its last run died (or the message came twice). Items are processed and
    recorded singly, each with its own attempt count, so an image that kills the worker every time
    fails alone after MAX_ITEM_ATTEMPTS instead of taking its chunk down forever."""
    complete = 0
    for index in store.unrecorded(job_id, indices):
        tries = store.count_attempt(job_id, f"item:{index}")
        if tries > MAX_ITEM_ATTEMPTS:
            inp = store.inputs(job_id, [index])[0]
            detail = f"processing this image stopped the worker {tries - 1} times"
            outcome = failed(index, inp.filename if inp else "", inp.image_id if inp else "", "worker_crashed", detail)
            complete = store.record_items(job_id, [outcome])
            store.drop_uploads(job_id, [index])
        else:
            complete = _process(store, embedder, job_id, collection, [index], max_pixels, before_item)
    # Nothing left to do here (all recorded before): say whether the job is complete all the same.
    return complete or store.record_items(job_id, [])


def fail_unrecorded(store: WorkerStore, job_id: str, indices: list[int], code: str, detail: str) -> None:
    """Used when a chunk runs out of time: its remaining items fail with a reason."""
    outcomes = [failed(i, "", "", code, detail) for i in store.unrecorded(job_id, indices)]
    if outcomes and store.record_items(job_id, outcomes) == 1:
        finish_index_job(store, job_id)
    store.drop_uploads(job_id, indices)


def finish_index_job(store: WorkerStore, job_id: str) -> None:
    total, failed = store.job_counts(job_id)
    store.finish_job(job_id, final_status(total, failed), store.index_result(job_id))
