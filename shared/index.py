"""An in-memory replica of one collection's L2-normalised feature matrix, with exact top-k.

Rows are kept dense (a delete moves the last row into the hole), so a query is one
matrix-vector product over contiguous memory plus an `argpartition`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

# Which rows a search may return: a boolean per row in `ids` order, or a predicate on ids.
Mask = np.ndarray | Callable[[str], bool] | None
Hits = list[tuple[str, float]]  # (image id, similarity), best first


def mask_array(ids: list[str], predicate: Callable[[str], bool]) -> np.ndarray:
    """The predicate over every id: a boolean per row."""
    return np.fromiter((bool(predicate(i)) for i in ids), dtype=bool, count=len(ids))


class IdRows:
    """Image ids held in dense rows: `_ids[row]` and its inverse `_row`.

    The exact index and shared.ann.AnnIndex both keep their vectors this way; sharing the
    bookkeeping and the exact scoring keeps their answers identical to the bit."""

    dim: int
    _ids: list[str]
    _row: dict[str, int]

    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

    def _place(self, image_id: str) -> tuple[int, bool]:
        """The id's row, and whether it is new (then appended as the last row)."""
        row = self._row.get(image_id)
        if row is not None:
            return row, False
        row = len(self._ids)
        self._ids.append(image_id)
        self._row[image_id] = row
        return row, True

    def _drop(self, image_id: str) -> tuple[int, int] | None:
        """Forget an id: (its row, the former last row), None if it was not held. The last id
        takes the hole; the caller moves its own arrays' last row likewise."""
        row = self._row.pop(image_id, None)
        if row is None:
            return None
        last = len(self._ids) - 1
        if row != last:
            moved = self._ids[last]
            self._ids[row] = moved
            self._row[moved] = row
        self._ids.pop()
        return row, last

    def search(
        self,
        query: np.ndarray,
        k: int,
        min_similarity: float | None = None,
        exclude: str | None = None,
        mask: Mask = None,
    ) -> Hits:
        """The k most similar vectors to a unit-norm query, best first, as (id, cosine similarity).

        `mask` keeps only some vectors: a boolean per row in `ids` order, or a predicate on ids.
        Equal similarities come back in id order, so every worker answers alike."""
        self._poll()
        if len(self._ids) == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(self.dim)
        return self._top(q, k, min_similarity, exclude, mask)

    def _poll(self) -> None:
        """Take over what changed behind the reader's back before a search (nothing here)."""

    def _top(self, q: np.ndarray, k: int, min_similarity: float | None, exclude: str | None, mask: Mask) -> Hits:
        """`search` once the query is a float32 vector and there is something to find."""
        raise NotImplementedError

    def _exact_hits(
        self,
        matrix: np.ndarray,
        q: np.ndarray,
        k: int,
        min_similarity: float | None,
        exclude: str | None,
        mask: Mask,
    ) -> Hits:
        """Top-k of every row of `matrix` (in `ids` order) against q, minus `exclude` and the
        rows `mask` leaves out."""
        scores = matrix @ q
        if exclude is not None and exclude in self._row:
            scores[self._row[exclude]] = -np.inf
        if callable(mask):
            mask = mask_array(self._ids, mask)
        if mask is not None:
            scores[~np.asarray(mask, dtype=bool)] = -np.inf
        return rank(scores, self._ids, k, min_similarity)


class VectorIndex(IdRows):
    def __init__(self, dim: int, capacity: int = 1024) -> None:
        self.dim = dim
        self._matrix = np.zeros((capacity, dim), dtype=np.float32)
        self._ids = []
        self._row = {}

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
            row, _ = self._place(image_id)
            self._matrix[row] = vec

    def remove(self, ids: Iterable[str]) -> int:
        removed = 0
        for image_id in ids:
            dropped = self._drop(image_id)
            if dropped is None:
                continue
            row, last = dropped
            if row != last:
                self._matrix[row] = self._matrix[last]
            removed += 1
        return removed

    def _top(self, q: np.ndarray, k: int, min_similarity: float | None, exclude: str | None, mask: Mask) -> Hits:
        return self._exact_hits(self.matrix, q, k, min_similarity, exclude, mask)


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
