"""Search: exact over the float32 rows, or IVF candidates re-ranked exactly."""

from __future__ import annotations

import math

import numpy as np

from shared.ann.ivf import TrainedIvf, _faiss
from shared.ann.masks import as_array, lists_to_scan
from shared.ann.rows import Rows
from shared.index import Hits, Mask, mask_array

# The approximate search scans at least this many vectors' codes (fast-scan: ~0.5 ms).
MIN_SCAN = 16_384


class Search(Rows):
    def _top(self, q: np.ndarray, k: int, min_similarity: float | None, exclude: str | None, mask: Mask) -> Hits:
        """Exact over the float32 rows, or approximate candidates re-ranked with the
        source-of-truth vectors (float32 dot products, so every worker answers alike)."""
        if self._ann is None:
            assert self._matrix is not None
            return self._exact_hits(self._matrix[: len(self._ids)], q, k, min_similarity, exclude, mask)
        rows = self._approximate_rows(q, k, exclude, mask)
        hits = self._rerank(q, rows, k)
        if min_similarity is not None:
            hits = [(i, s) for i, s in hits if s >= min_similarity]
        return hits

    def _nprobe(self, ann: TrainedIvf) -> int:
        if self.params.nprobe:
            return min(ann.nlist, self.params.nprobe)
        # nlist / 64 lists (recall@10 0.99 at 1 M, ~15k vectors scanned), but never fewer lists
        # than hold MIN_SCAN vectors: in smaller collections a list holds few vectors, and on real
        # embeddings (dense classes cut across many lists) 16 lists of the animals photos found
        # the exact top-10 for 87 % of queries, all lists for 99.8 % (bench/ann_animals.py).
        per_list = max(1.0, len(self._ids) / ann.nlist)
        return min(ann.nlist, max(16, ann.nlist // 64, math.ceil(MIN_SCAN / per_list)))

    def _ivf_rows(
        self,
        q: np.ndarray,
        count: int,
        nprobe: int,
        allowed: np.ndarray | None = None,
        lists: np.ndarray | None = None,
    ) -> np.ndarray:
        """Rows of the `count` best labels by approximate inner product, scanning the `nprobe` lists
        nearest to q, or exactly `lists`; `allowed` (bool per label) restricts the labels."""
        assert self._ann is not None
        selector = None
        if allowed is None and self._ann.index.ntotal > len(self._ids):  # some coded vectors are removed ones
            if self._selector is None:
                faiss = _faiss()
                self._selector = faiss.IDSelectorBitmap(len(self._alive) * 8, faiss.swig_ptr(self._alive))
            selector = self._selector
        labels = self._ann.labels(q, count, nprobe, allowed, selector, lists)
        labels = labels[(labels >= 0) & (labels < self._next_label)]
        rows = self._row_of[labels]
        return rows[rows >= 0]  # removed labels are filtered by faiss already; this is belt and braces

    def _approximate_rows(self, q: np.ndarray, k: int, exclude: str | None, mask: Mask) -> np.ndarray:
        """Candidate rows for the exact re-rank."""
        assert self._ann is not None
        n = len(self._ids)
        count = max(self.params.candidates, 2 * k)
        skip = self._row.get(exclude, -1) if exclude is not None else -1
        nprobe = self._nprobe(self._ann)
        if count >= n:  # asked for (nearly) everything: every row, exactly
            rows = np.arange(n)
            return rows[rows != skip] if mask is None else rows[(rows != skip) & as_array(self._ids, mask)]
        if callable(mask):
            # Try the cheap way: the predicate on an oversampled candidate list. Enough survivors
            # means the k best allowed vectors rank inside that list; otherwise test every id.
            rows = self._ivf_rows(q, 4 * count + 1, nprobe)
            rows = rows[rows != skip]
            passed = np.array([bool(mask(self._ids[r])) for r in rows], dtype=bool)
            if passed.sum() >= max(k, count // 4):
                return rows[passed][:count]
            mask = mask_array(self._ids, mask)
        if mask is None:
            rows = self._ivf_rows(q, count + 1, nprobe)
            return rows[rows != skip][:count]
        allowed_rows = np.flatnonzero(np.asarray(mask, dtype=bool)[:n])
        allowed_rows = allowed_rows[allowed_rows != skip]
        if len(allowed_rows) <= max(self.params.exact_subset, count):
            return allowed_rows  # few enough to re-rank them all: exact over the allowed subset
        labels = self._labels[allowed_rows]
        allowed = np.zeros(self._next_label, dtype=bool)
        allowed[labels] = True
        if self._lists_stale:
            self._list_of = self._ann.lists_of(len(self._row_of))
            self._lists_stale = False
        holding, enough = lists_to_scan(self._ann, self._list_of[labels], q, nprobe, n)
        rows = self._ivf_rows(q, count, nprobe, allowed, lists=holding[:enough])
        if len(rows) < min(count, len(allowed_rows)):
            rows = self._ivf_rows(q, count, nprobe, allowed, lists=holding)  # every list holding any
        return rows

    def _rerank(self, q: np.ndarray, rows: np.ndarray, k: int) -> list[tuple[str, float]]:
        if len(rows) == 0:
            return []
        vecs = self._source_vectors(rows)
        sims = vecs @ q
        ok = np.isfinite(sims)  # a vector deleted at the source since: not a match
        rows, sims = rows[ok], sims[ok]
        take = min(k, len(rows))
        top = np.argpartition(-sims, take - 1)[:take] if take < len(rows) else np.arange(len(rows))
        order = sorted(top.tolist(), key=lambda j: (-float(sims[j]), self._ids[rows[j]]))
        return [(self._ids[rows[j]], float(sims[j])) for j in order]
