"""Filtered search at scale: the worker's metadata columns + the approximate index, in one process.

    python bench/filters.py --vectors 1000000 --dim 1280 --queries 50

Builds an `AnnIndex` as a replica does (`AnnIndex.bulk`, re-ranking from float16 source vectors
held in this process, as Redis holds them for a worker) over synthetic clustered vectors, gives
every image metadata ({"label": one of 100, "bucket": 0..999, "rare": true for 1 in 1,000}), and
measures, against an unfiltered search in the same run:

* the first use of a field: loading its column from the records' JSON (what a worker does on the
  first filtered search after a start), time and memory;
* per filter (1 %, 0.1 %, 10 %, 50 %, an $or): the mask (filter evaluation + row mapping), also
  right after the replica changed (the row map is stale then), and the search, p50/p95, how many
  queries got k results, and recall@10 against the exact filtered top 10.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from spread import synthetic_chunks  # noqa: E402

from shared.ann import AnnIndex, AnnParams  # noqa: E402
from shared.filters import matches, parse  # noqa: E402
from worker.search.metadata_index import MetadataIndex  # noqa: E402

K = 10
FILTERS = {
    "label = l7 (1 %)": {"label": "l7"},
    "rare (0.1 %)": {"rare": True},
    "bucket < 100 (10 %)": {"bucket": {"$lt": 100}},
    "bucket < 500 (50 %)": {"bucket": {"$lt": 500}},
    "$or label in 3, rare (3.1 %)": {"$or": [{"label": {"$in": ["l1", "l2", "l3"]}}, {"rare": True}]},
}


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def metadata(r: int) -> dict:
    meta = {"label": f"l{r % 100}", "bucket": (r * 7919) % 1000}
    if r % 1000 == 0:
        meta["rare"] = True
    return meta


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q))


def run(n: int, dim: int, queries: int) -> dict:
    ids = [f"{r:032x}" for r in range(n)]
    source = np.empty((n, dim), dtype=np.float16)
    chunks = []
    start = 0
    for vecs, _ in synthetic_chunks(n, dim, seed=11):
        source[start : start + len(vecs)] = vecs
        chunks.append((ids[start : start + len(vecs)], start, len(vecs)))
        start += len(vecs)

    def fetch(want: list[str]) -> np.ndarray:
        return source[[int(i, 16) for i in want]].astype(np.float32)

    t0 = time.perf_counter()
    order = np.random.default_rng(1).permutation(len(chunks))  # a hash scan's order
    stream = ((chunks[c][0], source[chunks[c][1] : chunks[c][1] + chunks[c][2]].astype(np.float32)) for c in order)
    index = AnnIndex.bulk(dim, n, stream, fetch, AnnParams(background=False))
    built = time.perf_counter() - t0
    out: dict = {"vectors": n, "dim": dim, "index_build_s": round(built, 1), "exact": index.exact}

    # The records as Redis holds them: JSON text, parsed on load like WorkerStore.metadata_of.
    records = [json.dumps({"image_id": i, "metadata": metadata(r)}) for r, i in enumerate(ids)]

    def read(want: list[str]) -> list:
        return [json.loads(records[int(i, 16)]).get("metadata") for i in want]

    before = rss_mb()
    columns = MetadataIndex(index.ids)
    t0 = time.perf_counter()
    columns.ensure(parse({"label": "x", "bucket": 0, "rare": True}), read)
    out["columns_load_s"] = round(time.perf_counter() - t0, 2)
    out["columns_rss_mb"] = round(rss_mb() - before)

    rng = np.random.default_rng(5)
    qrows = rng.choice(n, queries, replace=False)
    qvecs = source[qrows].astype(np.float32)
    base = []
    for j, q in enumerate(qrows):
        t0 = time.perf_counter()
        index.search(qvecs[j], K, exclude=ids[q])
        base.append((time.perf_counter() - t0) * 1e3)
    out["unfiltered"] = {"p50_ms": round(pct(base, 50), 2), "p95_ms": round(pct(base, 95), 2)}

    row_of_index = np.array([int(i, 16) for i in index.ids])
    for name, spec in FILTERS.items():
        node = parse(spec)
        allowed = np.array([matches(node, metadata(r)) for r in range(n)])  # the reference, by row
        mask_ms, search_ms, full, recall = [], [], 0, []
        for j, q in enumerate(qrows):
            t0 = time.perf_counter()
            mask = columns.mask(node, index, key=0)
            t1 = time.perf_counter()
            hits = index.search(qvecs[j], K, exclude=ids[q], mask=mask)
            t2 = time.perf_counter()
            mask_ms.append((t1 - t0) * 1e3)
            search_ms.append((t2 - t1) * 1e3)
            assert (mask == allowed[row_of_index]).all(), name
            assert all(allowed[int(i, 16)] for i, _ in hits), name
            truth = _exact_top(source, qvecs[j], allowed, int(q))
            full += len(hits) == min(K, len(truth))
            recall.append(len(truth & {int(i, 16) for i, _ in hits}) / max(1, len(truth)))
        stale_ms = []
        for rep in range(5):  # right after the replica changed (an index job's images arrived)
            columns.apply([], [], read)
            t0 = time.perf_counter()
            columns.mask(node, index, key=(name, rep))
            stale_ms.append((time.perf_counter() - t0) * 1e3)
        out[name] = {
            "allowed": int(allowed.sum()),
            "mask_p50_ms": round(pct(mask_ms, 50), 2),
            "mask_after_a_change_p50_ms": round(pct(stale_ms, 50), 1),
            "search_p50_ms": round(pct(search_ms, 50), 2),
            "search_p95_ms": round(pct(search_ms, 95), 2),
            "queries_with_k": f"{full}/{queries}",
            "recall_at_10": round(float(np.mean(recall)), 3),
        }
        print(name, out[name], flush=True)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return out


def _exact_top(source: np.ndarray, q: np.ndarray, allowed: np.ndarray, own: int) -> set[int]:
    rows = np.flatnonzero(allowed)
    rows = rows[rows != own]
    best: list[tuple[float, int]] = []
    for s in range(0, len(rows), 200_000):
        block = rows[s : s + 200_000]
        sims = source[block].astype(np.float32) @ q
        take = min(K, len(block))
        top = np.argpartition(-sims, take - 1)[:take]
        best += [(float(sims[t]), int(block[t])) for t in top]
    return {r for _, r in sorted(best, key=lambda b: (-b[0], b[1]))[:K]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=200_000)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    print(json.dumps(run(args.vectors, args.dim, args.queries)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
