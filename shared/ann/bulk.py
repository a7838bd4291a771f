"""Building an index over a whole collection at once (a replica's first load)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable
from typing import Self

import numpy as np

from shared.ann.ivf import TrainedIvf, _faiss, sample_size, untrained
from shared.ann.params import AnnParams, FetchVectors
from shared.ann.rows import Rows

log = logging.getLogger(__package__)  # one logger for the package, as when it was one module

BULK_BLOCK = 50_000  # vectors per add while bulk-building (fewer, larger adds; see LIST_ASSIGN_MAX)


def _blocks(
    chunks: Iterable[tuple[list[str], np.ndarray]], dim: int, size: int, first: int | None = None
) -> Iterable[tuple[list[str], np.ndarray]]:
    """Regroup (ids, vectors) chunks into blocks of about `size` (the first of about `first`)."""
    ids: list[str] = []
    parts: list[np.ndarray] = []
    want = first or size
    for chunk_ids, vecs in chunks:
        ids += chunk_ids
        parts.append(np.asarray(vecs, dtype=np.float32).reshape(len(chunk_ids), dim))
        if len(ids) >= want:
            yield ids, np.concatenate(parts)
            ids, parts, want = [], [], size
    if ids:
        yield ids, np.concatenate(parts)


class BulkBuild(Rows):
    @classmethod
    def bulk(
        cls,
        dim: int,
        total: int,
        chunks: Iterable[tuple[list[str], np.ndarray]],
        fetch_vectors: FetchVectors | None = None,
        params: AnnParams | None = None,
        threads: int = 0,
    ) -> Self:
        """An index over `chunks` of (ids, vectors) expected to hold about `total` vectors, built
        the cheap way: below the threshold as exact rows; from it on, trained on the first
        vectors read (pass them in random order -- a Redis hash scan is) and then filled chunk by
        chunk, so no float32 copy of the whole collection is ever held. `threads`: OpenMP threads
        for the training (0: every core; nothing else is served while a replica is built)."""
        index = cls(dim, fetch_vectors, params)
        stream = iter(chunks)
        if total < index.params.threshold:
            for ids, vecs in stream:
                index.upsert(ids, vecs)
            return index
        # The training sample, and at least `threshold` vectors: fewer than that only if the
        # collection shrank since `total` was counted (then it is exact after all).
        want = max(sample_size(index.params, total), min(total, index.params.threshold))
        blocks = iter(_blocks(stream, dim, BULK_BLOCK, first=want))
        head_ids, sample = next(blocks, ([], np.zeros((0, dim), dtype=np.float32)))
        if len(sample) < index.params.threshold:
            index.upsert(head_ids, sample)
            for ids, vecs in blocks:
                index.upsert(ids, vecs)
            return index
        faiss = _faiss()
        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(threads or max(1, len(os.sched_getaffinity(0))))
        try:
            t0 = time.perf_counter()
            trained = untrained(dim, index.params, total)
            trained.train(sample)
            with index._lock:
                index._ann = TrainedIvf(trained, total)
                index._matrix = None
                if index.hold:
                    index._held = np.zeros((len(index._labels), dim), dtype=np.float16)
            index.upsert(head_ids, sample)
            del sample
            for ids, vecs in blocks:
                index.upsert(ids, vecs)
        finally:
            faiss.omp_set_num_threads(before)
        log.info("built an IVF%d index over %d vectors in %.1fs", trained.nlist, len(index), time.perf_counter() - t0)
        return index
