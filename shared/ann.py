"""A collection's vectors for search at scale: exact when small, approximate + exact re-rank when large.

`AnnIndex` has the surface of `shared.index.VectorIndex` (ids, upsert, remove, search, ...), so a
replica can hold either. Below `AnnParams.threshold` vectors it *is* the exact index: a dense
float32 matrix and one matrix-vector product per query, with VectorIndex's results to the bit.
From the threshold on it keeps, instead of float32 rows, a faiss IVF index whose lists hold 4-bit
product-quantisation codes in fast-scan layout ("IVF{nlist},PQ{dim/2}x4fs": one 4-bit code per
two dimensions, 320 bytes for a 1280-d vector, 1/16 of float32). A query then

1. asks the IVF index for the `candidates` (C) best labels by approximate inner product,
2. takes those candidates' source-of-truth vectors -- fetched with `fetch_vectors(ids)` (the
   float16 vectors in Redis) or, with `hold=True`, float16 copies held here -- and
3. re-ranks them exactly: similarity = float32 dot product with the query, ties broken by id.

So the order and similarities returned are those of exact cosine over the candidates; only recall
(whether the true top-k are among the C) is approximate. bench/ann_choice.py compared this design
with faiss HNSW-SQ8, IVF-SQ8/SQ4, IVF-PQ fast-scan at two code sizes and usearch (int8, float16)
on 1 M x 1280 vectors; its measurements set the defaults below (1 M x 1280: recall@10 0.99 with
C = 100, ~1 ms inside the process plus ~1 ms to fetch the candidates from Redis, ~0.5 GB).

Changes apply incrementally: `upsert` adds to the IVF lists (encoding needs no retraining) and
`remove` clears the label's bit in an "alive" bitmap that every search passes to faiss as a
selector, so a removed id can never come back (an id re-added gets a new label). Training (IVF
centroids, PQ codebooks) happens when the collection crosses the threshold, again whenever it has
grown `regrow` times since (more lists for more vectors) or removed vectors' codes pile up
(`compact`). Training runs in a background thread while the current structure keeps answering;
vectors added meanwhile are journaled and added to the new index before it takes over. Below
threshold / 2 the index goes back to exact.

Filters: `mask` is a boolean array aligned to `ids` or a predicate on ids. An array becomes an
IVF selector (more lists are probed the more selective it is); when it allows at most
`exact_subset` vectors the search is exact over exactly those. A predicate is first applied to an
oversampled candidate list; if too few pass it is evaluated over all ids and treated as an array.

Snapshots (`save` / `load`) hold the ids, the labels and the serialised faiss index (or the exact
matrix), so a restarted worker loads one and replays the log after it instead of rebuilding.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from shared.index import rank

log = logging.getLogger(__name__)

# fetch_vectors(ids) -> float32 (len(ids), dim), L2-normalised: the source-of-truth vectors. A row
# of NaN means the vector is gone (deleted after the replica last synced): that candidate is dropped.
FetchVectors = Callable[[list[str]], np.ndarray]
Mask = np.ndarray | Callable[[str], bool] | None

SNAPSHOT_VERSION = 1
# Adds of up to this many vectors note each one's IVF list as they go (a second coarse assignment,
# cheap for a few); bigger ones (bulk builds: at 1 M x 1280 it would cost ~40 s) read them back
# from the lists when a filtered search first needs them.
LIST_ASSIGN_MAX = 5_000
# The approximate search scans at least this many vectors' codes (fast-scan: ~0.5 ms).
MIN_SCAN = 16_384


@dataclass(frozen=True)
class AnnParams:
    # Exact below this many vectors. 1280-d, one core (bench/ann_choice.py threshold), p50 exact vs
    # approximate with the re-rank fetched from Redis: 5k 1.7 vs 2.1 ms, 10k 3.0 vs 1.4 ms, 20k 6.1
    # vs 1.5 ms, 100k 38 vs 2.8 ms. Below 10k exact is as fast and exact; above, it is not, and its
    # float32 matrix costs 5 KB a vector.
    threshold: int = 10_000
    candidates: int = 100  # C, re-ranked exactly; recall@10 >= 0.99 at 1 M with C = 100
    nprobe: int | None = None  # IVF lists scanned per query; None: nlist / 64, >= 16, >= MIN_SCAN vectors
    # The IVF lists' codes: "PQ{m}x4fs" is 4-bit product quantisation in fast-scan layout with m
    # = dim / subvector codes (dim / 4 bytes per vector with subvector = 2); "SQ4" / "SQ8" also work.
    codec: str = "PQ{m}x4fs"
    subvector: int = 2
    compact: float = 0.25  # rebuild when removed-but-still-coded vectors exceed this share of live ones
    regrow: float = 4.0  # retrain when the collection has grown this much since the last training
    train_per_list: int = 32  # training sample per IVF list (k-means cost grows with the sample)
    train_iterations: int = 10  # k-means passes over that sample
    # A filter allowing at most this many vectors is searched exactly over them (fetching 1,000
    # float16 vectors from Redis takes ~6 ms).
    exact_subset: int = 1_000
    background: bool = True  # train in a thread (False: inline, for tests and offline builds)
    build_threads: int = 1  # the other core keeps answering queries and running the model


def fetcher(
    get_raw: Callable[[list[str]], Sequence[bytes | None]],
    decode_many: Callable[[Sequence[bytes], int], np.ndarray],
    dim: int,
) -> FetchVectors:
    """A `fetch_vectors` from a raw getter (e.g. one HMGET of the collection's vectors hash) and a
    decoder (e.g. shared.vectors.decode_many): a missing vector becomes a row of NaN."""

    def fetch(ids: list[str]) -> np.ndarray:
        raw = get_raw(ids)
        out = np.full((len(ids), dim), np.nan, dtype=np.float32)
        present = [k for k, r in enumerate(raw) if r is not None]
        if present:
            out[present] = decode_many([raw[k] for k in present], dim)  # type: ignore[misc]
        return out

    return fetch


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


def nlist_for(n: int) -> int:
    """IVF lists for n vectors: a power of two near 2 * sqrt(n) (2048 at 1 M), 64 to 16384."""
    return int(min(16384, max(64, 2 ** round(math.log2(2 * math.sqrt(max(n, 1)))))))


def _faiss() -> Any:
    import faiss  # imported lazily: exact mode, the API and most tests need no faiss

    return faiss


@dataclass
class _Ann:
    """A trained IVF-PQ index over labels, and what it was trained for."""

    index: Any  # faiss.IndexIVFPQFastScan
    trained_n: int
    centroids: np.ndarray = field(init=False)  # the IVF lists' centroids, to rank lists for filters

    def __post_init__(self) -> None:
        self.centroids = self.index.quantizer.reconstruct_n(0, self.index.nlist)

    @property
    def nlist(self) -> int:
        return int(self.index.nlist)

    def lists_of(self, size: int) -> np.ndarray:
        """Which IVF list each label (below `size`) is in; -1 for none."""
        faiss = _faiss()
        out = np.full(size, -1, dtype=np.int32)
        invlists = self.index.invlists
        for lst in range(self.nlist):
            m = invlists.list_size(lst)
            if m:
                out[faiss.rev_swig_ptr(invlists.get_ids(lst), m)] = lst
        return out


@dataclass
class _Build:
    """A background training: its frozen inputs, the vectors added since, its outcome."""

    labels: np.ndarray
    ids: list[str]
    thread: threading.Thread | None = None
    journal: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (labels, vectors) added
    result: _Ann | None = None
    error: BaseException | None = None


class AnnIndex:
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
        self._ann: _Ann | None = None
        self._build: _Build | None = None
        # Held by the owner's thread while it changes rows, and by a build thread while it reads them.
        self._lock = threading.RLock()

    # -- the VectorIndex surface --------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._row

    @property
    def ids(self) -> list[str]:
        return list(self._ids)

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
                row = self._row.get(image_id)
                if row is None:
                    row = len(self._ids)
                    self._ids.append(image_id)
                    self._row[image_id] = row
                else:
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
                row = self._row.pop(image_id, None)
                if row is None:
                    continue
                label = int(self._labels[row])
                removed_labels.append(label)
                self._row_of[label] = -1
                last = len(self._ids) - 1
                if row != last:  # keep rows dense: the last row moves into the hole
                    moved = self._ids[last]
                    self._ids[row] = moved
                    self._row[moved] = row
                    self._labels[row] = self._labels[last]
                    self._row_of[self._labels[row]] = row
                    if self._matrix is not None:
                        self._matrix[row] = self._matrix[last]
                    if self._held is not None:
                        self._held[row] = self._held[last]
                self._ids.pop()
            if removed_labels:
                self._set_alive(np.array(removed_labels, dtype=np.int64), False)
        if removed_labels:
            self._maybe_build()
        return len(removed_labels)

    def search(
        self,
        query: np.ndarray,
        k: int,
        min_similarity: float | None = None,
        exclude: str | None = None,
        mask: Mask = None,
    ) -> list[tuple[str, float]]:
        """The k most similar vectors to a unit-norm query, best first, as (id, cosine similarity).

        `mask` keeps only some vectors: a boolean per row in `ids` order, or a predicate on ids.
        Similarities are float32 dot products with the source-of-truth vectors; equal ones come
        back in id order, so every worker answers alike."""
        self._poll()
        n = len(self._ids)
        if n == 0 or k <= 0:
            return []
        q = np.asarray(query, dtype=np.float32).reshape(self.dim)
        if self._ann is None:
            if callable(mask):
                mask = self._mask_array(mask)
            return self._exact_search(q, k, min_similarity, exclude, mask)
        rows = self._approximate_rows(q, k, exclude, mask)
        hits = self._rerank(q, rows, k)
        if min_similarity is not None:
            hits = [(i, s) for i, s in hits if s >= min_similarity]
        return hits

    # -- snapshots ----------------------------------------------------------------------------------
    def save(self, target: str | Path | BinaryIO) -> None:
        """Write a snapshot (numpy .npz, uncompressed) to a path or a binary stream."""
        self._poll()
        n = len(self._ids)
        if any("\n" in i for i in self._ids):
            raise ValueError("image ids with a newline cannot be saved")
        meta = {
            "version": SNAPSHOT_VERSION,
            "dim": self.dim,
            "params": asdict(self.params),
            "hold": self.hold,
            "next_label": self._next_label,
            "trained_n": self._ann.trained_n if self._ann else 0,
        }
        arrays: dict[str, np.ndarray] = {
            "meta": np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
            "ids": np.frombuffer("\n".join(self._ids).encode(), dtype=np.uint8),
            "labels": self._labels[:n],
        }
        if self._matrix is not None:
            arrays["matrix"] = self._matrix[:n]
        if self._held is not None:
            arrays["held"] = self._held[:n]
        if self._ann is not None:
            arrays["index"] = _faiss().serialize_index(self._ann.index)
        if isinstance(target, str | Path):
            with open(target, "wb") as fh:
                np.savez(fh, **arrays)
        else:
            np.savez(target, **arrays)

    @classmethod
    def load(
        cls,
        source: str | Path | BinaryIO | bytes,
        fetch_vectors: FetchVectors | None = None,
        params: AnnParams | None = None,
    ) -> AnnIndex:
        """An index from a snapshot; `params` (default: the saved ones) may change the tuning."""
        if isinstance(source, bytes):
            source = io.BytesIO(source)
        with np.load(source, allow_pickle=False) as data:
            meta = json.loads(data["meta"].tobytes())
            if meta["version"] != SNAPSHOT_VERSION:
                raise ValueError(f"snapshot version {meta['version']} is not {SNAPSHOT_VERSION}")
            known = {f.name for f in fields(AnnParams)}  # a newer version's extra tuning is ignored
            saved = AnnParams(**{k: v for k, v in meta["params"].items() if k in known})
            index = cls(meta["dim"], fetch_vectors, params or saved, hold=meta["hold"], capacity=1)
            raw_ids = data["ids"].tobytes().decode()
            ids = raw_ids.split("\n") if raw_ids else []
            labels = data["labels"].astype(np.int64)
            index._ids = ids
            index._row = {i: r for r, i in enumerate(ids)}
            index._labels = labels.copy()
            index._next_label = int(meta["next_label"])
            index._row_of = np.full(max(index._next_label, 1), -1, dtype=np.int64)
            index._row_of[labels] = np.arange(len(labels))
            index._alive = np.packbits(index._row_of >= 0, bitorder="little")
            index._matrix = data["matrix"].copy() if "matrix" in data.files else None
            index._held = data["held"].copy() if "held" in data.files else None
            if "index" in data.files:
                index._ann = _Ann(_faiss().deserialize_index(data["index"]), int(meta["trained_n"]))
                index._list_of = index._ann.lists_of(len(index._row_of))
            else:
                index._list_of = np.full(len(index._row_of), -1, dtype=np.int32)
        index._maybe_build()
        return index

    @classmethod
    def bulk(
        cls,
        dim: int,
        total: int,
        chunks: Iterable[tuple[list[str], np.ndarray]],
        fetch_vectors: FetchVectors | None = None,
        params: AnnParams | None = None,
        threads: int = 0,
    ) -> AnnIndex:
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
        want = max(index._sample_size(total), min(total, index.params.threshold))
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
            trained = index._untrained(total)
            trained.train(sample)
            with index._lock:
                index._ann = _Ann(trained, total)
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

    @property
    def building(self) -> bool:
        """Whether a background training is under way (its outcome not yet taken over)."""
        return self._build is not None

    # -- exact mode ---------------------------------------------------------------------------------
    def _exact_search(
        self, q: np.ndarray, k: int, min_similarity: float | None, exclude: str | None, mask: np.ndarray | None
    ) -> list[tuple[str, float]]:
        # As VectorIndex.search (the same ranking function), so that results are identical.
        n = len(self._ids)
        assert self._matrix is not None
        scores = self._matrix[:n] @ q
        if exclude is not None and exclude in self._row:
            scores[self._row[exclude]] = -np.inf
        if mask is not None:
            scores[~np.asarray(mask, dtype=bool)] = -np.inf
        return rank(scores, self._ids, k, min_similarity)

    # -- approximate mode ---------------------------------------------------------------------------
    def _mask_array(self, predicate: Callable[[str], bool]) -> np.ndarray:
        return np.fromiter((bool(predicate(i)) for i in self._ids), dtype=bool, count=len(self._ids))

    def _nprobe(self, ann: _Ann) -> int:
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
        faiss = _faiss()
        assert self._ann is not None
        params = faiss.SearchParametersIVF(nprobe=nprobe if lists is None else len(lists))
        if allowed is not None:
            bits = np.packbits(allowed, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(allowed), faiss.swig_ptr(bits))
            params.sel = selector
        elif self._ann.index.ntotal > len(self._ids):  # some coded vectors are removed ones
            if self._selector is None:
                self._selector = faiss.IDSelectorBitmap(len(self._alive) * 8, faiss.swig_ptr(self._alive))
            params.sel = self._selector
        if lists is None:
            _, labels = self._ann.index.search(q[None], count, params=params)
        else:
            # The lists are chosen here, not by the coarse quantizer (faiss's Python wrapper of
            # search_preassigned takes no search parameters, hence the direct call).
            qq = np.ascontiguousarray(q[None], dtype=np.float32)
            assign = np.ascontiguousarray(lists[None], dtype=np.int64)
            dist = np.zeros(assign.shape, dtype=np.float32)
            out_d = np.empty((1, count), dtype=np.float32)
            labels = np.empty((1, count), dtype=np.int64)
            sp = faiss.swig_ptr
            self._ann.index.search_preassigned_c(
                1, sp(qq), count, sp(assign), sp(dist), sp(out_d), sp(labels), False, params, None
            )
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
            return rows[rows != skip] if mask is None else rows[(rows != skip) & self._as_array(mask)]
        if callable(mask):
            # Try the cheap way: the predicate on an oversampled candidate list. Enough survivors
            # means the k best allowed vectors rank inside that list; otherwise test every id.
            rows = self._ivf_rows(q, 4 * count + 1, nprobe)
            rows = rows[rows != skip]
            passed = np.array([bool(mask(self._ids[r])) for r in rows], dtype=bool)
            if passed.sum() >= max(k, count // 4):
                return rows[passed][:count]
            mask = self._mask_array(mask)
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
        # Scan the lists holding allowed vectors, nearest centroid first, until they hold as many
        # allowed vectors as an unfiltered search scans in all (nprobe lists of n / nlist): a
        # cluster filter's vectors sit in few lists, maybe far from the query, and a scattered
        # filter's in many.
        ann = self._ann
        if self._lists_stale:
            self._list_of = ann.lists_of(len(self._row_of))
            self._lists_stale = False
        per_list = np.bincount(self._list_of[labels], minlength=ann.nlist)
        holding = np.flatnonzero(per_list)
        holding = holding[np.argsort(-(ann.centroids[holding] @ q), kind="stable")]
        enough = np.searchsorted(np.cumsum(per_list[holding]), nprobe * n / ann.nlist) + 1
        rows = self._ivf_rows(q, count, nprobe, allowed, lists=holding[:enough])
        if len(rows) < min(count, len(allowed_rows)):
            rows = self._ivf_rows(q, count, nprobe, allowed, lists=holding)  # every list holding any
        return rows

    def _as_array(self, mask: Mask) -> np.ndarray:
        return self._mask_array(mask) if callable(mask) else np.asarray(mask, dtype=bool)[: len(self._ids)]

    def _source_vectors(self, rows: Sequence[int] | np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if self._matrix is not None:
            return self._matrix[rows]
        if self._held is not None:
            return self._held[rows].astype(np.float32)
        assert self.fetch_vectors is not None
        got = np.asarray(self.fetch_vectors([self._ids[r] for r in rows]), dtype=np.float32)
        return got.reshape(len(rows), self.dim)

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

    # -- training -----------------------------------------------------------------------------------
    def _maybe_build(self) -> None:
        """Start a training when the size calls for a (new) approximate index; go back to exact
        when the collection has shrunk well below the threshold."""
        if self._build is not None:
            return
        n, p = len(self._ids), self.params
        if self._ann is None:
            if n >= p.threshold:
                self._start_build()
        elif n < p.threshold // 2:
            self._to_exact()
        else:
            grown = n >= p.regrow * self._ann.trained_n and nlist_for(n) > self._ann.nlist
            cluttered = self._ann.index.ntotal - n > p.compact * max(n, 1)  # removed vectors' codes
            if grown or cluttered:
                self._start_build()

    def _start_build(self) -> None:
        n = len(self._ids)
        build = _Build(labels=self._labels[:n].copy(), ids=list(self._ids))
        self._build = build
        if self.params.background:
            build.thread = threading.Thread(target=self._run_build, args=(build,), name="ann-build", daemon=True)
            build.thread.start()
        else:
            self._run_build(build)
            self._poll()

    def _untrained(self, n: int) -> Any:
        faiss = _faiss()
        codec = self.params.codec.format(m=self.dim // self.params.subvector)
        index = faiss.index_factory(self.dim, f"IVF{nlist_for(n)},{codec}", faiss.METRIC_INNER_PRODUCT)
        # k-means iterations beyond ~10 barely move recall after the exact re-rank, and each costs
        # a pass of sample x nlist x dim (at 1 M: ~3 s a pass on one core).
        index.cp.niter = self.params.train_iterations
        return index

    def _sample_size(self, n: int) -> int:
        return min(n, self.params.train_per_list * nlist_for(n))

    def _run_build(self, build: _Build) -> None:
        try:
            faiss = _faiss()
            faiss.omp_set_num_threads(self.params.build_threads)  # this thread's OpenMP teams only
            t0 = time.perf_counter()
            n = len(build.ids)
            index = self._untrained(n)
            nlist = index.nlist
            rng = np.random.default_rng(n)
            sample = np.sort(rng.choice(n, self._sample_size(n), replace=False))
            index.train(self._build_vectors(build, sample))
            for start in range(0, n, 50_000):
                chunk = np.arange(start, min(n, start + 50_000))
                index.add_with_ids(self._build_vectors(build, chunk), build.labels[chunk])
            build.result = _Ann(index, n)
            log.info("trained an IVF%d index over %d vectors in %.1fs", nlist, n, time.perf_counter() - t0)
        except BaseException as exc:  # reported to the owner's thread by _poll
            build.error = exc

    def _build_vectors(self, build: _Build, positions: np.ndarray) -> np.ndarray:
        """Vectors of the frozen build inputs at `positions`: by label from the rows (exact mode or
        held), else fetched by id. A vector removed since the build began is zero: its label is
        removed again when the journal is replayed."""
        labels = build.labels[positions]
        with self._lock:
            rows = self._row_of[labels]
            local = self._matrix if self._matrix is not None else self._held
            if local is not None:
                out = np.zeros((len(labels), self.dim), dtype=np.float32)
                live = rows >= 0
                out[live] = local[rows[live]]
                return out
        got = np.asarray(self.fetch_vectors([build.ids[p] for p in positions]), dtype=np.float32)  # type: ignore[misc]
        return np.nan_to_num(got.reshape(len(positions), self.dim), nan=0.0)

    def _poll(self) -> None:
        """If a background training has finished, replay what changed meanwhile and switch to it."""
        build = self._build
        if build is None or (build.thread is not None and build.thread.is_alive()):
            return
        self._build = None
        if build.error is not None:
            log.error("training the approximate index failed; staying as is", exc_info=build.error)
            return
        assert build.result is not None
        with self._lock:
            index = build.result.index
            for labels, vectors in build.journal:
                index.add_with_ids(vectors, labels)
            # What was removed meanwhile (or read as zeros, being removed) is dead in the bitmap already.
            self._ann = build.result
            self._list_of = build.result.lists_of(len(self._row_of))
            self._lists_stale = False
            if self._matrix is not None:
                if self.hold:
                    self._held = self._matrix.astype(np.float16)  # same capacity as the other rows
                self._matrix = None  # the float32 rows are what the approximate index saves
        self._maybe_build()

    def _to_exact(self) -> None:
        n = len(self._ids)
        matrix = np.zeros((len(self._labels), self.dim), dtype=np.float32)  # rows share one capacity
        for start in range(0, n, 10_000):
            rows = np.arange(start, min(n, start + 10_000))
            matrix[rows] = self._source_vectors(rows)
        with self._lock:
            self._matrix = matrix
            self._held = None
            self._ann = None

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for a background training to finish and take it over (tests, offline builds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._build is not None:  # taking one over may start the next (it grew meanwhile)
            build = self._build
            if build.thread is not None:
                build.thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            self._poll()
            if deadline is not None and time.monotonic() >= deadline:
                break
        return self._build is None
