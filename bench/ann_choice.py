"""Which approximate index to keep per collection in each worker: measured on 1 M synthetic vectors.

Every candidate answers a query in two steps: the approximate index proposes C candidates from
compressed vectors, then the candidates are re-ranked exactly by dot products with their float16
source-of-truth vectors, either held in the worker ("held") or fetched from Redis ("redis", one
HMGET of C fields, as the worker would do). Reported per candidate and search setting (`table`):

    param      efSearch (HNSW), nprobe (IVF) or expansion_search (usearch)
    C          candidates re-ranked
    recall     recall@10 after re-ranking vs exact float32 (200 stored vectors as queries, self
               excluded; re-ranking by float16 vectors caps it at ~0.998)
    p50 p95    ms per query, one at a time on one thread: search + re-rank from held float16
    ann50      ms of that in the approximate search alone
    redis50/95 ms per query, re-ranking from Redis instead
    2t ...     two threads querying at once (each one query at a time): latency and total QPS

and per candidate: build time, anonymous-RSS growth (index memory), snapshot size and save/load
time, deleting 10k then adding 10k (native delete or tombstone), recall after that churn, and
whether vectors added after the deletes are found ("added found": faiss 1.15's fast-scan
remove_ids corrupts later adds -- shared/ann/ uses tombstones instead).

The data are `bench.spread.synthetic` vectors (clusters spread like real EfficientNet-Lite0
embeddings), generated once in chunks and kept as .npy files under /tmp (memory-mapped).

    python bench/ann_choice.py prepare --n 1000000 --dim 1280   # data, ground truth, Redis (~3 min)
    python bench/ann_choice.py all --dim 1280                    # every candidate, each in a subprocess
    python bench/ann_choice.py run usearch-i8 --dim 1280         # one candidate (prints JSON)
    python bench/ann_choice.py table --dim 1280                  # the results table again
    python bench/ann_choice.py threshold --dim 1280              # where exact search stops paying
    python bench/ann_choice.py class --dim 1280                  # shared.ann.AnnIndex end to end

Redis: a private redis-server (no persistence) on --redis-port, started by `prepare` and left
running for the runs; `stop-redis` ends it (by the pid it recorded). Set OMP_WAIT_POLICY=PASSIVE
(`all` does for its runs): on two shared cores spinning OpenMP threads slowed faiss 10-50x.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

WORK = Path("/tmp/simsearch-ann")
EXTRA = 10_000  # vectors added (and deleted) incrementally after the build
K = 10
CHUNK = 65_536


# -- process measurements -------------------------------------------------------------------------
def rss_anon() -> int:
    """Anonymous resident memory: what the index allocated, not the memory-mapped data files."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def settle() -> int:
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # return freed arenas, so RSS shows what is held
    return rss_anon()


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


# -- data -----------------------------------------------------------------------------------------
@dataclass
class Data:
    root: Path
    n: int
    dim: int
    f32: np.ndarray  # (n + EXTRA, dim) memory-mapped
    f16: np.ndarray
    queries: np.ndarray  # row numbers of the query vectors
    truth: np.ndarray  # (queries, K) exact float32 top-K rows, self excluded
    deleted: np.ndarray  # rows deleted by the churn step
    truth_churn: np.ndarray  # top-K after adding rows n.. n+EXTRA and deleting `deleted`

    @classmethod
    def open(cls, n: int, dim: int) -> Data:
        root = WORK / f"{n}x{dim}"
        meta = json.loads((root / "meta.json").read_text())
        return cls(
            root=root,
            n=meta["n"],
            dim=dim,
            f32=np.load(root / "f32.npy", mmap_mode="r"),
            f16=np.load(root / "f16.npy", mmap_mode="r"),
            queries=np.load(root / "queries.npy"),
            truth=np.load(root / "truth.npy"),
            deleted=np.load(root / "deleted.npy"),
            truth_churn=np.load(root / "truth_churn.npy"),
        )

    def chunks(self, start: int, stop: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for i in range(start, stop, CHUNK):
            j = min(stop, i + CHUNK)
            yield np.arange(i, j, dtype=np.int64), np.ascontiguousarray(self.f32[i:j])

    def sample(self, count: int, seed: int = 1) -> np.ndarray:
        rows = np.sort(np.random.default_rng(seed).choice(self.n, min(count, self.n), replace=False))
        return np.ascontiguousarray(self.f32[rows])


def image_id(row: int) -> str:
    return f"{row:032x}"  # real image ids are 32 hex digits


def exact_top(f32: np.ndarray, rows: np.ndarray, qvecs: np.ndarray, alive: np.ndarray, k: int) -> np.ndarray:
    """Exact float32 top-k rows among `rows` for each query, the query's own row excluded."""
    best_s = np.full((len(qvecs), k), -np.inf, dtype=np.float32)
    best_r = np.full((len(qvecs), k), -1, dtype=np.int64)
    for i in range(0, len(rows), CHUNK):
        part = rows[i : i + CHUNK]
        part = part[alive[part]]
        sims = qvecs @ np.ascontiguousarray(f32[part]).T
        both_s = np.concatenate([best_s, sims], axis=1)
        both_r = np.concatenate([best_r, np.broadcast_to(part, sims.shape)], axis=1)
        top = np.argpartition(-both_s, k - 1, axis=1)[:, :k]
        best_s, best_r = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_r, top, 1)
    order = np.argsort(-best_s, axis=1, kind="stable")
    return np.take_along_axis(best_r, order, 1)


def prepare(args: argparse.Namespace) -> None:
    from bench.spread import synthetic_chunks

    root = WORK / f"{args.n}x{args.dim}"
    root.mkdir(parents=True, exist_ok=True)
    total = args.n + EXTRA
    t0 = time.perf_counter()
    if not (root / "f16.npy").is_file():
        f32 = np.lib.format.open_memmap(root / "f32.npy", "w+", np.float32, (total, args.dim))
        f16 = np.lib.format.open_memmap(root / "f16.npy", "w+", np.float16, (total, args.dim))
        at = 0
        # n / 1000 clusters (one animals class each); chunk by chunk, so memory stays at one chunk
        for vecs, _ in synthetic_chunks(total, args.dim, args.seed, clusters=max(1, args.n // 1000)):
            f32[at : at + len(vecs)] = vecs
            f16[at : at + len(vecs)] = vecs.astype(np.float16)
            at += len(vecs)
        f32.flush()
        f16.flush()
        print(f"generated {total} x {args.dim} in {time.perf_counter() - t0:.0f}s", flush=True)
    f32 = np.load(root / "f32.npy", mmap_mode="r")
    rng = np.random.default_rng(args.seed + 7)
    queries = np.sort(rng.choice(args.n, args.queries, replace=False))
    others = np.setdiff1d(np.arange(args.n), queries)
    deleted = np.sort(rng.choice(others, EXTRA, replace=False))
    qvecs = np.ascontiguousarray(f32[queries])
    alive = np.ones(total, dtype=bool)
    alive[queries] = False  # self is never a match; other queries are excluded only as "self"
    truth = []
    t1 = time.perf_counter()
    for churn in (False, True):
        alive[:] = True
        if churn:
            alive[deleted] = False
        rows = np.arange(total if churn else args.n)
        # exclude self: compute with k+1 and drop each query's own row
        top = exact_top(f32, rows, qvecs, alive, K + 1)
        truth.append(np.stack([[r for r in t if r != q][:K] for t, q in zip(top, queries, strict=True)]))
    print(f"ground truth in {time.perf_counter() - t1:.0f}s", flush=True)
    np.save(root / "queries.npy", queries)
    np.save(root / "truth.npy", truth[0])
    np.save(root / "deleted.npy", deleted)
    np.save(root / "truth_churn.npy", truth[1])
    (root / "meta.json").write_text(json.dumps({"n": args.n, "dim": args.dim, "seed": args.seed}))
    if not args.no_redis:
        load_redis(args, root)


# -- Redis: the source of truth for re-ranking ----------------------------------------------------
def redis_client(port: int):
    import redis

    return redis.Redis(host="127.0.0.1", port=port)


def start_redis(port: int) -> None:
    client = redis_client(port)
    try:
        client.ping()
        return
    except Exception:
        pass
    WORK.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    (WORK / f"redis-{port}.pid").write_text(str(proc.pid))
    for _ in range(100):
        try:
            client.ping()
            return
        except Exception:
            time.sleep(0.1)
    raise RuntimeError("redis-server did not start")


def load_redis(args: argparse.Namespace, root: Path) -> None:
    start_redis(args.redis_port)
    client = redis_client(args.redis_port)
    key = f"bench:{args.dim}:vectors"
    f16 = np.load(root / "f16.npy", mmap_mode="r")
    if client.hlen(key) == len(f16):
        return
    client.delete(key)
    t0 = time.perf_counter()
    for i in range(0, len(f16), 5000):
        block = np.ascontiguousarray(f16[i : i + 5000])
        client.hset(key, mapping={image_id(i + j): block[j].tobytes() for j in range(len(block))})
    info = client.info("memory")
    print(
        f"loaded {len(f16)} float16 vectors into Redis in {time.perf_counter() - t0:.0f}s "
        f"(used_memory {info['used_memory'] / 2**30:.2f} GiB)",
        flush=True,
    )


def stop_redis(port: int) -> None:
    pid_file = WORK / f"redis-{port}.pid"
    if pid_file.is_file():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid_file.read_text()), 15)
        pid_file.unlink()


# -- candidates -----------------------------------------------------------------------------------
class Candidate:
    """An approximate index over int64 labels (the row numbers)."""

    name = ""
    deletes = "native"  # or "tombstone": removed labels stay in the structure and are filtered
    params: list[Any] = [None]  # noqa: RUF012 - search settings swept
    rerank: list[int] | None = None  # re-rank depths, if not the command line's (exact baselines)
    max_queries: int | None = None  # the exact baselines take ~0.5 s a query: time fewer

    def build(self, data: Data) -> None: ...
    def set_param(self, value: Any) -> None: ...
    def search(self, q: np.ndarray, count: int) -> np.ndarray: ...  # labels, -1 padded
    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None: ...
    def remove(self, labels: np.ndarray) -> None: ...
    def save(self, path: Path) -> None: ...
    def load(self, path: Path) -> None: ...


def _faiss(threads: int = 1):
    import faiss

    faiss.omp_set_num_threads(threads)
    return faiss


def coarse_centroids(data: Data, nlist: int) -> np.ndarray:
    """Spherical k-means centroids of a sample (cached: every IVF candidate uses the same ones)."""
    path = data.root / f"coarse-{nlist}.npy"
    if path.is_file():
        return np.load(path)
    faiss = _faiss(2)
    kmeans = faiss.Kmeans(data.dim, nlist, niter=12, spherical=True, max_points_per_centroid=64, seed=1)
    t0 = time.perf_counter()
    kmeans.train(data.sample(nlist * 32))  # 32 per centroid: enough, and 4x cheaper than 128
    print(f"coarse k-means ({nlist}) in {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    np.save(path, kmeans.centroids)
    return kmeans.centroids


class FaissIndex(Candidate):
    """Any faiss index built by a factory string (inner product, or L2 after a PCA)."""

    def __init__(
        self,
        name: str,
        factory: str,
        params: list[Any],
        train: int = 100_000,
        l2: bool = False,
        ef_construction: int = 0,
        rerank: list[int] | None = None,
        max_queries: int | None = None,
    ) -> None:
        self.name, self.factory, self.params, self.train_size = name, factory, params, train
        self.rerank, self.max_queries = rerank, max_queries
        self.l2 = l2
        self.ef_construction = ef_construction
        self.index: Any = None
        self.alive: np.ndarray | None = None  # tombstones for indexes that cannot remove
        self.search_params: Any = None
        self.deletes = "tombstone" if "HNSW" in factory else "native"

    def _inner(self) -> Any:
        faiss = _faiss()
        inner = faiss.downcast_index(self.index)
        while isinstance(inner, faiss.IndexPreTransform | faiss.IndexIDMap):
            inner = faiss.downcast_index(inner.index)
        return inner

    def build(self, data: Data) -> None:
        faiss = _faiss(2)
        metric = faiss.METRIC_L2 if self.l2 else faiss.METRIC_INNER_PRODUCT
        self.index = faiss.index_factory(data.dim, self.factory, metric)
        inner = self._inner()
        if self.ef_construction and hasattr(inner, "hnsw"):
            inner.hnsw.efConstruction = self.ef_construction
        if isinstance(inner, faiss.IndexIVF):
            # Every IVF candidate shares one coarse quantizer (k-means is the costly part of training);
            # IndexIVF.train skips it when the quantizer already holds nlist centroids.
            inner.quantizer.add(coarse_centroids(data, inner.nlist))
        if hasattr(inner, "do_polysemous_training"):
            inner.do_polysemous_training = False  # only for Hamming filtering, and very slow to train
        if not self.index.is_trained:
            self.index.train(data.sample(self.train_size))
        # IVF removes need no direct map: remove_ids scans the lists (fast-scan lists support no other way)
        for labels, vecs in data.chunks(0, data.n):
            self._add(labels, vecs)
        self.alive = np.ones(data.n + EXTRA, dtype=bool)

    def _add(self, labels: np.ndarray, vecs: np.ndarray) -> None:
        inner = self._inner()
        if hasattr(inner, "hnsw") or not hasattr(self.index, "add_with_ids"):
            assert labels[0] == self.index.ntotal  # HNSW numbers vectors in insertion order
            self.index.add(vecs)
        else:
            try:
                self.index.add_with_ids(vecs, labels)
            except RuntimeError:
                assert labels[0] == self.index.ntotal
                self.index.add(vecs)

    def set_param(self, value: Any) -> None:
        faiss = _faiss()
        inner = self._inner()
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = value
            self.search_params = faiss.SearchParametersHNSW(efSearch=value)
        elif isinstance(inner, faiss.IndexIVF):
            inner.nprobe = value
            self.search_params = faiss.SearchParametersIVF(nprobe=value)
        self._refresh_selector()

    def _refresh_selector(self) -> None:
        if self.search_params is None:
            return
        if self.deletes != "tombstone" or self.alive is None or self.alive.all():
            self.search_params.sel = None
            return
        faiss = _faiss()
        self._bits = np.packbits(self.alive, bitorder="little")
        self._selector = faiss.IDSelectorBitmap(len(self.alive), faiss.swig_ptr(self._bits))
        self.search_params.sel = self._selector

    def search(self, q: np.ndarray, count: int) -> np.ndarray:
        _, labels = self.index.search(q[None], count, params=self.search_params)
        return labels[0]

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self._add(labels, vectors)

    def remove(self, labels: np.ndarray) -> None:
        faiss = _faiss()
        if self.deletes == "tombstone":
            self.alive[labels] = False
            self._refresh_selector()
        else:
            self.index.remove_ids(faiss.IDSelectorBatch(labels))

    def save(self, path: Path) -> None:
        _faiss().write_index(self.index, str(path))
        if self.alive is not None:
            np.save(path.with_suffix(".alive.npy"), self.alive)

    def load(self, path: Path) -> None:
        self.index = _faiss().read_index(str(path))
        if path.with_suffix(".alive.npy").is_file():
            self.alive = np.load(path.with_suffix(".alive.npy"))


class ExactF32(Candidate):
    """The baseline: one float32 matrix-vector product over every vector (what VectorIndex does)."""

    name = "exact-f32"
    rerank = [10]  # noqa: RUF012 - already exact: re-ranking only orders the top 10
    max_queries = 60

    def build(self, data: Data) -> None:
        self.matrix = np.empty((data.n, data.dim), dtype=np.float32)
        for labels, vecs in data.chunks(0, data.n):
            self.matrix[labels] = vecs

    def search(self, q: np.ndarray, count: int) -> np.ndarray:
        scores = self.matrix @ q
        top = np.argpartition(-scores, count)[:count]
        return top[np.argsort(-scores[top])]

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.matrix = np.concatenate([self.matrix, vectors])  # the real index grows by doubling

    def remove(self, labels: np.ndarray) -> None:
        self.matrix[labels] = 0  # stands for "move the last row into the hole": same cost class

    def save(self, path: Path) -> None:
        np.save(path, self.matrix)

    def load(self, path: Path) -> None:
        self.matrix = np.load(path if path.suffix == ".npy" else path.with_suffix(path.suffix + ".npy"))


class Usearch(Candidate):
    """usearch HNSW over int8 / float16 / float32 copies, optionally after a PCA (then L2)."""

    def __init__(
        self, name: str, dtype: str, params: list[Any], connectivity: int = 16, expansion_add: int = 128, pca: int = 0
    ) -> None:
        self.name, self.dtype, self.params, self.pca = name, dtype, params, pca
        self.connectivity, self.expansion_add = connectivity, expansion_add
        self.index: Any = None
        self.projection: np.ndarray | None = None
        self.deletes = "native"

    def _project(self, vecs: np.ndarray) -> np.ndarray:
        if self.projection is None:
            return vecs
        # Centred and projected, then scaled so values use int8's range (usearch maps [-1, 1]).
        return np.ascontiguousarray(((vecs - self.mean) @ self.projection) * self.scale, dtype=np.float32)

    def build(self, data: Data) -> None:
        from usearch.index import Index

        if self.pca:
            sample = data.sample(100_000)
            self.mean = sample.mean(0)
            _, _, vt = np.linalg.svd(sample - self.mean, full_matrices=False)
            self.projection = np.ascontiguousarray(vt[: self.pca].T)
            self.scale = 1.0
            self.scale = float(0.9 / np.abs(self._project(sample)).max())
        ndim = self.pca or data.dim
        metric = "l2sq" if self.pca else "ip"
        self.index = Index(
            ndim=ndim, metric=metric, dtype=self.dtype, connectivity=self.connectivity, expansion_add=self.expansion_add
        )
        for labels, vecs in data.chunks(0, data.n):
            self.index.add(labels, self._project(vecs), threads=2)

    def set_param(self, value: Any) -> None:
        self.index.expansion_search = value

    def search(self, q: np.ndarray, count: int) -> np.ndarray:
        found = self.index.search(self._project(q[None])[0], count, threads=1)
        return found.keys.astype(np.int64)

    def add(self, labels: np.ndarray, vectors: np.ndarray) -> None:
        self.index.add(labels, self._project(vectors), threads=2)

    def remove(self, labels: np.ndarray) -> None:
        self.index.remove(labels)

    def save(self, path: Path) -> None:
        self.index.save(str(path))
        if self.projection is not None:
            np.savez(path.with_suffix(".pca.npz"), mean=self.mean, projection=self.projection, scale=self.scale)

    def load(self, path: Path) -> None:
        from usearch.index import Index

        self.index = Index.restore(str(path))
        if self.pca:
            pca = np.load(path.with_suffix(".pca.npz"))
            self.mean, self.projection, self.scale = pca["mean"], pca["projection"], float(pca["scale"])


def candidates(dim: int = 1280) -> dict[str, Callable[[], Candidate]]:
    hnsw_ef = [64, 128, 256]
    ivf_probe = [8, 16, 32, 64]
    usearch_ef = [64, 128, 256]
    half, quarter = dim // 2, dim // 4  # PQ codes: one 4-bit code per 2 (or 4) dimensions
    return {
        "exact-f32": ExactF32,
        "exact-f16": lambda: FaissIndex("exact-f16", "IDMap,SQfp16", [None], rerank=[50], max_queries=60),
        "hnsw32-sq8": lambda: FaissIndex("hnsw32-sq8", "HNSW32_SQ8", hnsw_ef, ef_construction=64),
        "ivf2048-sq8": lambda: FaissIndex("ivf2048-sq8", "IVF2048,SQ8", ivf_probe),
        "ivf2048-sq4": lambda: FaissIndex("ivf2048-sq4", "IVF2048,SQ4", ivf_probe),
        f"ivf2048-pq{half}x4fs": lambda: FaissIndex(f"ivf2048-pq{half}x4fs", f"IVF2048,PQ{half}x4fs", ivf_probe),
        f"ivf2048-pq{quarter}x4fs": lambda: FaissIndex(
            f"ivf2048-pq{quarter}x4fs", f"IVF2048,PQ{quarter}x4fs", ivf_probe
        ),
        "usearch-i8": lambda: Usearch("usearch-i8", "i8", usearch_ef),
        "usearch-f16": lambda: Usearch("usearch-f16", "f16", usearch_ef),
        "usearch-pca512-i8": lambda: Usearch("usearch-pca512-i8", "i8", usearch_ef, pca=512),
    }


# -- one candidate, measured ----------------------------------------------------------------------
@dataclass
class Searcher:
    data: Data
    index: Candidate
    redis: Any
    key: str
    excluded: set[int] = field(default_factory=set)

    def query(self, qrow: int, c: int, source: str) -> tuple[list[int], float, float]:
        """(top-K rows, approximate-search seconds, re-rank seconds) for the stored vector `qrow`."""
        q = np.ascontiguousarray(self.data.f32[qrow])
        t0 = time.perf_counter()
        cand = self.index.search(q, c + 1)
        t1 = time.perf_counter()
        cand = cand[(cand >= 0) & (cand != qrow)][:c]
        if source == "redis":
            raw = self.redis.hmget(self.key, [image_id(int(r)) for r in cand])
            vecs = np.frombuffer(b"".join(raw), dtype=np.float16).reshape(len(cand), -1)
        else:
            vecs = self.data.f16[np.sort(cand)] if len(cand) else np.zeros((0, self.data.dim), np.float16)
            cand = np.sort(cand)
        sims = vecs.astype(np.float32) @ q
        order = np.lexsort((cand, -sims))[:K]
        t2 = time.perf_counter()
        return [int(r) for r in cand[order]], t1 - t0, t2 - t1


def recall(found: list[list[int]], truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)]))


def measure_queries(s: Searcher, c: int, source: str, truth: np.ndarray, threads: int = 1) -> dict[str, float]:
    limit = s.index.max_queries or len(s.data.queries)
    queries = [int(q) for q in s.data.queries[:limit]]
    truth = truth[:limit]
    for q in queries[: max(2, limit // 10)]:  # warm caches and lazily built structures
        s.query(q, c, source)
    results: dict[int, tuple[list[int], float, float]] = {}

    def worker(part: list[int]) -> None:
        for q in part:
            results[q] = s.query(q, c, source)

    t0 = time.perf_counter()
    if threads == 1:
        worker(queries)
    else:
        pool = [threading.Thread(target=worker, args=(queries[i::threads],)) for i in range(threads)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
    wall = time.perf_counter() - t0
    total = [(results[q][1] + results[q][2]) * 1e3 for q in queries]
    return {
        "recall": recall([results[q][0] for q in queries], truth),
        "p50_ms": pct(total, 50),
        "p95_ms": pct(total, 95),
        "ann_p50_ms": pct([results[q][1] * 1e3 for q in queries], 50),
        "rerank_p50_ms": pct([results[q][2] * 1e3 for q in queries], 50),
        "qps": len(queries) / wall,
    }


def run_one(args: argparse.Namespace) -> dict[str, Any]:
    from threadpoolctl import threadpool_limits

    data = Data.open(args.n, args.dim)
    # "held" re-ranking reads float16 rows held in memory, as a worker would: read the file into
    # anonymous memory before the baseline, so page faults on the memory map do not count as search.
    data.f16 = np.load(data.root / "f16.npy")
    index = candidates(args.dim)[args.name]()
    threadpool_limits(1)  # one query, one core: the other serves the model (or a second query)
    out: dict[str, Any] = {"name": args.name, "n": data.n, "dim": data.dim, "deletes": index.deletes}
    snap = data.root / f"snap-{args.name}.idx"
    base = settle()
    t0 = time.perf_counter()
    if args.reuse and snap.is_file():
        index.load(snap)
        out["loaded_from_snapshot"] = True
    else:
        with _blas_threads(2):
            index.build(data)
    out["build_s"] = time.perf_counter() - t0
    out["rss_mb"] = (settle() - base) / 2**20
    _faiss(1)
    key = f"bench:{args.dim}:vectors"
    client = redis_client(args.redis_port) if args.redis_port else None
    has_redis = client is not None and _redis_ready(client, key, len(data.f16))
    s = Searcher(data, index, client, key)
    rows = []
    for param in index.params:
        index.set_param(param)
        for c in index.rerank or args.rerank:
            row: dict[str, Any] = {"param": param, "C": c}
            row.update({f"held_{k}": v for k, v in measure_queries(s, c, "held", data.truth).items()})
            if has_redis:
                r = measure_queries(s, c, "redis", data.truth)
                row.update({"redis_p50_ms": r["p50_ms"], "redis_p95_ms": r["p95_ms"], "redis_recall": r["recall"]})
            two = measure_queries(s, c, "held", data.truth, threads=2)
            row.update({"two_p50_ms": two["p50_ms"], "two_p95_ms": two["p95_ms"], "two_qps": two["qps"]})
            if index.rerank:  # the exact baselines: also one query on both cores (BLAS / OpenMP threads)
                with threadpool_limits(2):
                    _faiss(2)
                    intra = measure_queries(s, c, "held", data.truth)
                    _faiss(1)
                row.update({"intra2_p50_ms": intra["p50_ms"], "intra2_p95_ms": intra["p95_ms"]})
            rows.append(row)
            print(json.dumps({"name": args.name, **row}), file=sys.stderr, flush=True)
    out["rows"] = rows
    # snapshot
    t0 = time.perf_counter()
    index.save(snap)
    out["save_s"] = time.perf_counter() - t0
    out["snapshot_mb"] = sum(p.stat().st_size for p in data.root.glob(f"snap-{args.name}.*")) / 2**20
    t0 = time.perf_counter()
    loaded = candidates(args.dim)[args.name]()
    loaded.load(snap)
    out["load_s"] = time.perf_counter() - t0
    del loaded
    settle()
    # churn: delete EXTRA vectors, then add EXTRA new ones (adds after deletes: the order that
    # exposed faiss's fast-scan bug, where vectors added after a remove_ids were mostly not found)
    extra = np.arange(data.n, data.n + EXTRA, dtype=np.int64)
    with threadpool_limits(2):
        _faiss(2)
        t0 = time.perf_counter()
        index.remove(data.deleted)
        out["delete10k_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        index.add(extra, np.ascontiguousarray(data.f32[data.n :]))
        out["add10k_s"] = time.perf_counter() - t0
    _faiss(1)
    best = max(
        rows,
        key=lambda r: (
            r["held_recall"] >= 0.97,
            -r["held_p50_ms"] if r["held_recall"] >= 0.97 else 0,
            r["held_recall"],
        ),
    )
    index.set_param(best["param"])
    churn = measure_queries(s, best["C"], "held", data.truth_churn)
    found = [s.query(int(q), best["C"], "held")[0] for q in data.queries]
    deleted = set(data.deleted.tolist())
    # each of 200 added vectors, queried with itself, must come back first
    probe = extra[:: EXTRA // 200]
    out["added_found"] = float(np.mean([r in index.search(np.ascontiguousarray(data.f32[r]), 10) for r in probe]))
    out["churn"] = {
        "param": best["param"],
        "C": best["C"],
        "recall": churn["recall"],
        "p50_ms": churn["p50_ms"],
        "deleted_returned": sum(r in deleted for f in found for r in f),
    }
    return out


def _redis_ready(client: Any, key: str, count: int) -> bool:
    try:
        return client.hlen(key) == count
    except Exception:
        return False


@contextlib.contextmanager
def _blas_threads(n: int) -> Iterator[None]:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=n):
        yield


# -- where exact search stops paying -------------------------------------------------------------
def threshold(args: argparse.Namespace) -> None:
    """Exact (VectorIndex) vs AnnIndex (re-ranking from Redis and from held float16) per size."""
    from threadpoolctl import threadpool_limits

    from shared.ann import AnnIndex, AnnParams
    from shared.index import VectorIndex

    threadpool_limits(1)
    _faiss(1)
    data = Data.open(args.n, args.dim)
    client = redis_client(args.redis_port)
    key = f"bench:{args.dim}:vectors"

    def fetch(ids: list[str]) -> np.ndarray:
        raw = client.hmget(key, ids)
        return np.frombuffer(b"".join(raw), dtype=np.float16).reshape(len(ids), -1).astype(np.float32)

    head = ["exact p50", "p95", "ann+redis p50", "p95", "ann+held p50", "p95"]
    print(f"{'n':>8s} " + " ".join(f"{h:>13s}" for h in head))
    for n in args.sizes:
        ids = [image_id(r) for r in range(n)]
        vecs = np.ascontiguousarray(data.f32[:n])
        exact = VectorIndex(args.dim)
        exact.upsert(ids, vecs)
        fetched = AnnIndex(args.dim, fetch, AnnParams(threshold=1, background=False, build_threads=2))
        held = AnnIndex(args.dim, None, AnnParams(threshold=1, background=False, build_threads=2))
        for target in (fetched, held):
            target.upsert(ids, vecs)  # one training, at the full size
        del vecs
        queries = np.random.default_rng(5).choice(n, 100, replace=False)
        times: dict[str, list[float]] = {"exact": [], "fetched": [], "held": []}
        for q in queries:
            qv = np.ascontiguousarray(data.f32[q])
            for name, target in (("exact", exact), ("fetched", fetched), ("held", held)):
                t0 = time.perf_counter()
                target.search(qv, 10, exclude=ids[q])
                times[name].append((time.perf_counter() - t0) * 1e3)
        cols = [f"{pct(times[x], q):13.2f}" for x in ("exact", "fetched", "held") for q in (50, 95)]
        print(f"{n:8d} " + " ".join(cols), flush=True)


def measure_filters(data: Data, index: Any, queries: int = 50) -> None:
    """Masked searches: random masks of several selectivities, and cluster masks (8 clusters by
    nearest of 8 random data vectors, the shape of the service's cluster filter)."""
    qrows = data.queries[:queries]
    qvecs = np.ascontiguousarray(data.f32[qrows])
    scores = np.empty((len(qrows), data.n), dtype=np.float32)
    cluster = np.empty(data.n, dtype=np.int64)
    centres = np.ascontiguousarray(data.f32[np.random.default_rng(3).choice(data.n, 8, replace=False)])
    for i in range(0, data.n, CHUNK):
        block = np.ascontiguousarray(data.f32[i : min(data.n, i + CHUNK)])
        scores[:, i : i + len(block)] = qvecs @ block.T
        cluster[i : i + len(block)] = np.argmax(block @ centres.T, axis=1)
    scores[np.arange(len(qrows)), qrows] = -np.inf  # self excluded
    rows_of_ids = np.array([int(i, 16) for i in index.ids])  # masks are aligned to index.ids
    rng = np.random.default_rng(4)
    masks: list[tuple[str, Callable[[int], np.ndarray]]] = [
        (f"random {share:g}", lambda _q, share=share: rng.random(data.n) < share) for share in (5e-4, 5e-3, 0.05, 0.5)
    ]
    masks.append(("own cluster", lambda q: cluster == cluster[q]))
    masks.append(("other cluster", lambda q: cluster == (cluster[q] + 1) % 8))
    for name, make in masks:
        times, hits_found, shares = [], [], []
        for j, q in enumerate(qrows):
            allowed = make(int(q))
            shares.append(allowed.mean())
            truth_scores = np.where(allowed, scores[j], -np.inf)
            truth = set(np.argpartition(-truth_scores, K)[:K].tolist())
            truth = {r for r in truth if np.isfinite(truth_scores[r])}
            t0 = time.perf_counter()
            hits = index.search(qvecs[j], K, exclude=image_id(int(q)), mask=allowed[rows_of_ids])
            times.append((time.perf_counter() - t0) * 1e3)
            hits_found.append(len(truth & {int(i, 16) for i, _ in hits}) / max(1, len(truth)))
        print(
            f"filter {name:14s} (allowed {np.mean(shares):.4f}): p50 {pct(times, 50):6.2f} ms, "
            f"p95 {pct(times, 95):6.2f} ms, recall@10 {np.mean(hits_found):.3f}",
            flush=True,
        )


# -- the chosen design, as shared.ann.AnnIndex, end to end ----------------------------------------
def measure_class(args: argparse.Namespace) -> None:
    """Fill an AnnIndex as a replica would (batches of 2,000, trainings in the background), then
    measure memory, latency (re-ranking from Redis), recall, snapshot save/load and a restart."""
    from threadpoolctl import threadpool_limits

    from shared.ann import AnnIndex, AnnParams

    threadpool_limits(1)
    data = Data.open(args.n, args.dim)
    client = redis_client(args.redis_port)
    key = f"bench:{args.dim}:vectors"

    def fetch(ids: list[str]) -> np.ndarray:
        raw = client.hmget(key, ids)
        return np.frombuffer(b"".join(raw), dtype=np.float16).reshape(len(ids), -1).astype(np.float32)

    params = AnnParams(build_threads=args.build_threads, **({"nprobe": args.nprobe} if args.nprobe else {}))
    base = settle()
    index = AnnIndex(args.dim, fetch, params)
    t0 = time.perf_counter()
    batch = 2_000
    for start in range(0, data.n, batch):
        stop = min(data.n, start + batch)
        index.upsert([image_id(r) for r in range(start, stop)], np.ascontiguousarray(data.f32[start:stop]))
    filled = time.perf_counter() - t0
    index.wait()
    built = time.perf_counter() - t0
    rss = settle() - base
    assert index._ann is not None
    print(
        f"filled {data.n} in {filled:.0f}s, trainings done at {built:.0f}s (IVF{index._ann.nlist}, trained at "
        f"{index._ann.trained_n}); RSS +{rss / 2**20:.0f} MB",
        flush=True,
    )

    def run(label: str, target: AnnIndex, truth: np.ndarray) -> None:
        times, found = [], []
        for q in data.queries:
            qv = np.ascontiguousarray(data.f32[q])
            t1 = time.perf_counter()
            hits = target.search(qv, K, exclude=image_id(int(q)))
            times.append((time.perf_counter() - t1) * 1e3)
            found.append([int(i, 16) for i, _ in hits])
        print(
            f"{label}: p50 {pct(times, 50):.2f} ms, p95 {pct(times, 95):.2f} ms, "
            f"recall@10 {recall(found, truth):.3f} ({len(times)} queries)",
            flush=True,
        )

    run("search (re-rank from Redis)", index, data.truth)
    run("again", index, data.truth)
    measure_filters(data, index)
    path = data.root / "snap-annindex.npz"
    t1 = time.perf_counter()
    index.save(path)
    saved = time.perf_counter() - t1
    del index
    settle()
    t1 = time.perf_counter()
    index = AnnIndex.load(path, fetch)
    loaded = time.perf_counter() - t1
    print(f"snapshot {path.stat().st_size / 2**20:.0f} MB: save {saved:.1f}s, load {loaded:.1f}s", flush=True)
    # a restart: load the snapshot, then apply the log after it (10k deletes, 10k adds)
    t1 = time.perf_counter()
    index = AnnIndex.load(path, fetch)
    deleted = [image_id(int(r)) for r in data.deleted]
    for start in range(0, EXTRA, batch):
        index.remove(deleted[start : start + batch])
        rows = range(data.n + start, data.n + min(EXTRA, start + batch))
        index.upsert([image_id(r) for r in rows], np.ascontiguousarray(data.f32[rows.start : rows.stop]))
    print(f"restart: load + apply 20k log entries in {time.perf_counter() - t1:.1f}s", flush=True)
    run("after the churn", index, data.truth_churn)
    gone = set(deleted)
    hits = [i for q in data.queries for i, _ in index.search(np.ascontiguousarray(data.f32[q]), K)]
    print(f"deleted ids returned: {sum(i in gone for i in hits)}", flush=True)


# -- orchestration --------------------------------------------------------------------------------
def results_path(n: int, dim: int) -> Path:
    return WORK / f"{n}x{dim}" / "results.jsonl"


def run_all(args: argparse.Namespace) -> None:
    names = args.only or list(candidates(args.dim))
    for name in names:
        cmd = [
            sys.executable,
            __file__,
            "run",
            name,
            "--n",
            str(args.n),
            "--dim",
            str(args.dim),
            "--redis-port",
            str(args.redis_port),
            "--rerank",
            *map(str, args.rerank),
        ] + (["--reuse"] if args.reuse else [])
        print(f"== {name}", flush=True)
        # Idle OpenMP threads sleep instead of spinning: on two shared cores spinning made faiss
        # training 10-50x slower whenever anything else ran.
        env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
        log_path = WORK / f"{args.n}x{args.dim}" / f"log-{name}.txt"
        with log_path.open("w") as log_file:
            proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=log_file, text=True, env=env)
        if proc.returncode != 0:
            print(log_path.read_text()[-3000:], flush=True)
            continue
        with results_path(args.n, args.dim).open("a") as fh:
            fh.write(proc.stdout.strip().splitlines()[-1] + "\n")
        print_table([json.loads(proc.stdout.strip().splitlines()[-1])])


def print_table(results: list[dict[str, Any]]) -> None:
    head = (
        f"{'candidate':20s} {'param':>5s} {'C':>4s} {'recall':>6s} {'p50':>6s} {'p95':>6s} {'ann50':>6s} "
        f"{'redis50':>7s} {'redis95':>7s} {'2t p50':>6s} {'2t p95':>6s} {'2t qps':>6s}"
    )
    print(head)
    for res in results:
        for r in res["rows"]:
            print(
                f"{res['name']:20s} {r['param']!s:>5s} {r['C']:4d} {r['held_recall']:6.3f} {r['held_p50_ms']:6.2f} "
                f"{r['held_p95_ms']:6.2f} {r['held_ann_p50_ms']:6.2f} {r.get('redis_p50_ms', float('nan')):7.2f} "
                f"{r.get('redis_p95_ms', float('nan')):7.2f} {r['two_p50_ms']:6.2f} {r['two_p95_ms']:6.2f} "
                f"{r['two_qps']:6.0f}"
            )
        ch = res["churn"]
        print(
            f"{'':20s} build {res['build_s']:.0f}s{' (loaded)' if res.get('loaded_from_snapshot') else ''}, "
            f"RSS +{res['rss_mb']:.0f} MB, snapshot {res['snapshot_mb']:.0f} MB save {res['save_s']:.1f}s "
            f"load {res['load_s']:.1f}s, add 10k {res['add10k_s']:.1f}s, delete 10k {res['delete10k_s']:.3f}s "
            f"({res['deletes']}), after churn recall {ch['recall']:.3f} p50 {ch['p50_ms']:.2f} ms "
            f"(param {ch['param']}, C {ch['C']}), deleted returned {ch['deleted_returned']}, "
            f"added found {res.get('added_found', float('nan')):.3f}"
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--queries", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-redis", action="store_true")
    r = sub.add_parser("run")
    r.add_argument(
        "name",
        help="a candidate: exact-f32, exact-f16, hnsw32-sq8, ivf2048-sq8, ivf2048-sq4, "
        "ivf2048-pq{dim/2}x4fs, ivf2048-pq{dim/4}x4fs, usearch-i8, usearch-f16, usearch-pca512-i8",
    )
    a = sub.add_parser("all")
    a.add_argument("--only", nargs="*")
    t = sub.add_parser("table")
    sr = sub.add_parser("stop-redis")
    cl = sub.add_parser("class")
    cl.add_argument("--build-threads", type=int, default=1)
    cl.add_argument("--nprobe", type=int)
    th = sub.add_parser("threshold")
    th.add_argument("--sizes", type=int, nargs="*", default=[5_000, 10_000, 20_000, 50_000, 100_000])
    for q in (p, r, a, t, th, cl, sr):
        q.add_argument("--n", type=int, default=1_000_000)
        q.add_argument("--dim", type=int, default=1280)
        q.add_argument("--redis-port", type=int, default=6391)
    for q in (r, a):
        q.add_argument("--rerank", type=int, nargs="*", default=[50, 100, 200])
        q.add_argument("--reuse", action="store_true", help="load the snapshot of an earlier run instead of building")
    args = parser.parse_args()
    if args.cmd == "prepare":
        prepare(args)
    elif args.cmd == "run":
        print(json.dumps(run_one(args)))
    elif args.cmd == "all":
        run_all(args)
    elif args.cmd == "table":
        print_table([json.loads(line) for line in results_path(args.n, args.dim).read_text().splitlines()])
    elif args.cmd == "class":
        measure_class(args)
    elif args.cmd == "threshold":
        threshold(args)
    elif args.cmd == "stop-redis":
        stop_redis(args.redis_port)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
