"""An in-memory replica of one collection's L2-normalised feature matrix, with exact top-k.

Rows are kept dense (a delete moves the last row into the hole), so a query is one
matrix-vector product over contiguous memory plus an `argpartition`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


class VectorIndex:
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._ids: list[str] = []
        self._row: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    @property
    def matrix(self) -> np.ndarray:
        return self._matrix[: len(self._ids)]

    def vector(self, image_id: str) -> np.ndarray:
        return self._matrix[self._row[image_id]].copy()

    def _reserve(self, extra: int) -> None:
        needed = len(self._ids) + extra
        if needed <= self._matrix.shape[0]:
            return
        grown = np.zeros((max(needed, 2 * self._matrix.shape[0]), self.dim), dtype=np.float32)
        grown[: len(self._ids)] = self.matrix
        self._matrix = grown

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        self._reserve(len(ids))
        for image_id, vec in zip(ids, vectors, strict=True):
            row = self._row.get(image_id)
            if row is None:
                row = len(self._ids)
                self._ids.append(image_id)
                self._row[image_id] = row
            self._matrix[row] = vec

    def remove(self, ids: Iterable[str]) -> int:
        removed = 0
        for image_id in ids:
            row = self._row.pop(image_id, None)
            if row is None:
                continue
            last = len(self._ids) - 1
            if row != last:
                moved = self._ids[last]
                self._matrix[row] = self._matrix[last]
                self._ids[row] = moved
                self._row[moved] = row
            self._ids.pop()
            removed += 1
        return removed

    def search(
        self,
        query: np.ndarray,
        k: int,
        min_similarity: float | None = None,
        exclude: str | None = None,
        mask: np.ndarray | None = None,
    ) -> list[tuple[str, float]]:
        """The k most similar rows to a unit-norm query, best first, as (id, cosine similarity).

        `mask`, a boolean per row (in `ids` order), keeps only the rows where it is True."""
        n = len(self._ids)
        if n == 0 or k <= 0:
            return []
        scores = self.matrix @ np.asarray(query, dtype=np.float32).reshape(self.dim)
        if exclude is not None and exclude in self._row:
            scores[self._row[exclude]] = -np.inf
        if mask is not None:
            scores[~mask] = -np.inf
        return rank(scores, self._ids, k, min_similarity)


def rank(scores: np.ndarray, ids: Sequence[str], k: int, min_similarity: float | None) -> list[tuple[str, float]]:
    """The k best rows by score as (id, score), best first; -inf scores (excluded rows) never."""
    n = len(scores)
    take = min(k, n)
    top = np.argpartition(-scores, take - 1)[:take] if take < n else np.arange(n)
    # Sort by score, then by id so that equal scores come back in the same order on every worker.
    order = sorted(top.tolist(), key=lambda r: (-float(scores[r]), ids[r]))
    hits = [(ids[r], float(scores[r])) for r in order if np.isfinite(scores[r])]
    if min_similarity is not None:
        hits = [(i, s) for i, s in hits if s >= min_similarity]
    return hits
