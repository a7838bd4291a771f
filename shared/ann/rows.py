"""The index's state: ids in dense rows, each row's label, and its vector (exact or held)."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from shared.ann.ivf import TrainedIvf
from shared.ann.params import AnnParams, FetchVectors
from shared.index import IdRows

if TYPE_CHECKING:
    from shared.ann.training import Build

# Adds of up to this many vectors note each one's IVF list as they go (a second coarse assignment,
# cheap for a few); bigger ones (bulk builds: at 1 M x 1280 it would cost ~40 s) read them back
# from the lists when a filtered search first needs them.
LIST_ASSIGN_MAX = 5_000


class Rows(IdRows):
    """The VectorIndex surface over rows. Every change first takes over a finished background
    training (`_poll`) and may start one (`_maybe_build`): both come from `training.Training`."""

    def __init__(
        self,
        dim: int,
        fetch_vectors: FetchVectors | None = None,
        params: AnnParams | None = None,
        hold: bool | None = None,
        capacity: int = 1024,
    ) -> None:
        """`fetch_vectors` gives source-of-truth vectors for re-ranking; `hold` keeps float16 copies
        here instead (default: hold when there is nothing to fetch from). At 1 M x 1280 holding
        costs 2.5 GB, fetching C = 100 vectors from Redis ~1 ms per query."""
        self.dim = dim
        self.params = params or AnnParams()
        self.fetch_vectors = fetch_vectors
        self.hold = fetch_vectors is None if hold is None else hold
        if not self.hold and fetch_vectors is None:
            raise ValueError("without fetch_vectors the index must hold the vectors (hold=True)")
        self._ids: list[str] = []
        self._row: dict[str, int] = {}
        # Each vector has a label, never reused: the IVF index knows vectors by label, and a
        # label removed there stays removed even if its id comes back (under a new label).
        self._labels = np.zeros(capacity, dtype=np.int64)  # row -> label
        self._row_of = np.full(capacity, -1, dtype=np.int64)  # label -> row, -1: removed
        self._next_label = 0
        # Removal is a tombstone: the label's bit is cleared here and searches pass this bitmap to
        # faiss as a selector. (faiss 1.15's remove_ids on fast-scan lists corrupts later adds, and
        # on other IVF lists costs a pass over every list.) Codes of removed vectors stay until the
        # next training (`compact`).
        self._alive = np.zeros((capacity + 7) // 8, dtype=np.uint8)
        self._selector: Any = None
        # label -> its IVF list: a filter's allowed vectors tell which lists to scan
        self._list_of = np.full(capacity, -1, dtype=np.int32)
        self._lists_stale = False
        self._matrix: np.ndarray | None = np.zeros((capacity, dim), dtype=np.float32)  # exact mode
        self._held: np.ndarray | None = None  # float16 rows, approximate mode with hold
        self._ann: TrainedIvf | None = None
        self._build: Build | None = None
        # Held by the owner's thread while it changes rows, and by a build thread while it reads them.
        self._lock = threading.RLock()

    def _poll(self) -> None:
        raise NotImplementedError  # training.Training's

    def _maybe_build(self) -> None:
        raise NotImplementedError  # training.Training's

    def rows_of(self, ids: Sequence[str]) -> np.ndarray:
        """Each id's row (its place in `ids`), -1 for one not held: a subset's rows without
        walking every id."""
        get = self._row.get
        return np.fromiter((get(i, -1) for i in ids), dtype=np.int64, count=len(ids))

    @property
    def exact(self) -> bool:
        """Whether searches are exact (the float32 matrix) rather than approximate + re-ranked."""
        return self._ann is None

    @property
    def matrix(self) -> np.ndarray:
        """All vectors as float32 rows in `ids` order (exact mode, or held vectors)."""
        self._poll()
        if self._matrix is not None:
            return self._matrix[: len(self._ids)]
        if self._held is not None:
            return self._held[: len(self._ids)].astype(np.float32)
        raise RuntimeError(
            f"an approximate index of {len(self)} vectors keeps no full matrix; fetch the vectors instead"
        )

    def rows(self, positions: Sequence[int] | np.ndarray) -> np.ndarray:
        """Float32 vectors of the rows at `positions` (in `ids` order): held, or fetched."""
        self._poll()
        return self._source_vectors(positions)

    def vector(self, image_id: str) -> np.ndarray:
        row = self._row[image_id]
        if self._matrix is not None:
            return self._matrix[row].copy()
        return self._source_vectors([row])[0]

    def upsert(self, ids: list[str], vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors, dtype=np.float32).reshape(len(ids), self.dim)
        if not ids:
            return
        if len(set(ids)) != len(ids):  # last one wins, as in VectorIndex
            last = {i: k for k, i in enumerate(ids)}
            keep = sorted(last.values())
            ids, vectors = [ids[k] for k in keep], vectors[keep]
        self._poll()
        with self._lock:
            replaced = [self._labels[self._row[i]] for i in ids if i in self._row]
            if replaced:
                # An updated vector gets a new label; the old one is removed.
                self._set_alive(np.array(replaced, dtype=np.int64), False)
            self._reserve(len(ids))
            labels = np.arange(self._next_label, self._next_label + len(ids), dtype=np.int64)
            self._next_label += len(ids)
            self._reserve_labels(self._next_label)
            for image_id, vec, label in zip(ids, vectors, labels, strict=True):
                row, added = self._place(image_id)
                if not added:
                    self._row_of[self._labels[row]] = -1
                self._labels[row] = label
                self._row_of[label] = row
                if self._matrix is not None:
                    self._matrix[row] = vec
                if self._held is not None:
                    self._held[row] = vec
            self._set_alive(labels, True)
            if self._ann is not None:
                if len(labels) <= LIST_ASSIGN_MAX:
                    _, lists = self._ann.index.quantizer.search(vectors, 1)
                    self._list_of[labels] = lists[:, 0]
                else:  # the add assigns them again: read the lists back when a filter needs them
                    self._lists_stale = True
                self._ann.index.add_with_ids(vectors, labels)
            if self._build is not None:
                self._build.journal.append((labels, vectors.copy()))
        self._maybe_build()

    def remove(self, ids: Iterable[str]) -> int:
        self._poll()
        removed_labels: list[int] = []
        with self._lock:
            for image_id in ids:
                dropped = self._drop(image_id)
                if dropped is None:
                    continue
                row, last = dropped
                label = int(self._labels[row])
                removed_labels.append(label)
                self._row_of[label] = -1
                if row != last:  # the last id took the hole: so do its label and vector
                    self._labels[row] = self._labels[last]
                    self._row_of[self._labels[row]] = row
                    if self._matrix is not None:
                        self._matrix[row] = self._matrix[last]
                    if self._held is not None:
                        self._held[row] = self._held[last]
            if removed_labels:
                self._set_alive(np.array(removed_labels, dtype=np.int64), False)
        if removed_labels:
            self._maybe_build()
        return len(removed_labels)

    def _source_vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._matrix is not None:
            return self._matrix[rows]
        if self._held is not None:
            return self._held[rows].astype(np.float32)
        assert self.fetch_vectors is not None
        got = np.asarray(self.fetch_vectors([self._ids[r] for r in rows]), dtype=np.float32)
        return got.reshape(len(rows), self.dim)

    def _set_alive(self, labels: np.ndarray, alive: bool) -> None:
        if alive:
            np.bitwise_or.at(self._alive, labels >> 3, (1 << (labels & 7)).astype(np.uint8))
        else:
            np.bitwise_and.at(self._alive, labels >> 3, ~(1 << (labels & 7)).astype(np.uint8))

    # -- capacity -----------------------------------------------------------------------------------
    def _reserve(self, extra: int) -> None:
        needed = len(self._ids) + extra
        if needed <= len(self._labels):
            return
        size = max(needed, 2 * len(self._labels))
        n = len(self._ids)
        grown = np.zeros(size, dtype=np.int64)
        grown[:n] = self._labels[:n]
        self._labels = grown
        if self._matrix is not None:
            m = np.zeros((size, self.dim), dtype=np.float32)
            m[:n] = self._matrix[:n]
            self._matrix = m
        if self._held is not None:
            h = np.zeros((size, self.dim), dtype=np.float16)
            h[:n] = self._held[:n]
            self._held = h

    def _reserve_labels(self, count: int) -> None:
        if count <= len(self._row_of):
            return
        grown = np.full(max(count, 2 * len(self._row_of)), -1, dtype=np.int64)
        grown[: len(self._row_of)] = self._row_of
        self._row_of = grown
        lists = np.full(len(grown), -1, dtype=np.int32)
        lists[: len(self._list_of)] = self._list_of
        self._list_of = lists
        bits = np.zeros((len(grown) + 7) // 8, dtype=np.uint8)
        bits[: len(self._alive)] = self._alive
        self._alive = bits
        self._selector = None  # it pointed at the old bitmap
