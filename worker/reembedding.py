"""Re-embed a collection with the model this worker runs, from the stored renditions.

New vectors are staged beside the live ones; the last chunk swaps them in at once, so searches
never see a mix of two models' vectors.
"""

from __future__ import annotations

import logging

import numpy as np

from shared.imaging import to_model_input
from shared.jobs import final_status
from shared.models.base import Embedder
from shared.schemas import ItemStatus, JobInput
from worker.indexing import Outcome, Pending, decode_item, failed, guarded, ok
from worker.store import WorkerStore

log = logging.getLogger(__name__)


def _embed_and_stage(store: WorkerStore, embedder: Embedder, collection: str, pending: list[Pending]) -> list[Outcome]:
    batch = np.stack([to_model_input(p.decoded.image, embedder.input_size) for p in pending])
    store.stage_vectors(collection, [p.input.image_id for p in pending], embedder.embed(batch))
    return [ok(p.index, p.input, ItemStatus.created) for p in pending]


def reembed_chunk(
    store: WorkerStore, embedder: Embedder, job_id: str, collection: str, indices: list[int], max_pixels: int
) -> None:
    params = store.job_params(job_id)
    if params is None:
        log.warning("re-embed job %s expired before it ran", job_id)
        return
    store.mark_running(job_id)
    inputs: list[JobInput | None] = store.inputs(job_id, indices)
    outcomes: list[Outcome] = []
    pending: list[Pending] = []
    if params["model"] != embedder.name:
        detail = f"this job re-embeds with {params['model']} but this worker runs {embedder.name}"
        outcomes = [
            failed(i, "", inp.image_id if inp else "", "model_mismatch", detail)
            for i, inp in zip(indices, inputs, strict=True)
        ]
    else:
        present = [(i, inp) for i, inp in zip(indices, inputs, strict=True) if inp is not None]
        thumbs = store.thumbnails(collection, [inp.image_id for _, inp in present])
        for (index, inp), data in zip(present, thumbs, strict=True):
            if data is None:  # deleted since the job started
                outcomes.append(ok(index, inp, ItemStatus.skipped))
                continue
            step = decode_item(index, inp, data, max_pixels)
            (pending if isinstance(step, Pending) else outcomes).append(step)
        if pending:
            outcomes += guarded(pending, lambda: _embed_and_stage(store, embedder, collection, pending))
    if store.record_items(job_id, outcomes) == 1:
        finish_reembed_job(store, job_id, collection, params)


def finish_reembed_job(store: WorkerStore, job_id: str, collection: str, params: dict) -> None:
    total, failures = store.job_counts(job_id)
    status = final_status(total, failures)
    result: dict = {"model": params["model"], "dimension": params["dim"], "reembedded": total - failures}
    if failures < total:
        result["dropped"] = store.swap_vectors(collection, params["model"], int(params["dim"]))
    store.finish_job(job_id, status, result)
