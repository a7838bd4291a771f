"""Approximate replicas vs exact search on real embeddings: the 3,000 labelled animals photos.

    python bench/ann_animals.py [--data ../shared/datasets/animals] [--threshold 1000]

Embeds the photos with EfficientNet-Lite0 (ImageNet weights; bench/spread.py's cached embedder),
stores them as the service does (float16, decoded back to unit float32), and answers every photo
as a query (itself excluded) with the exact index and with `shared.ann.AnnIndex` forced into
approximate mode (threshold below the collection size: an IVF index of 4-bit codes, candidates
re-ranked exactly), built as a worker builds a replica from Redis (`AnnIndex.bulk`, trained on
all 3,000) and grown as a running replica grows (trained on the first `--threshold`). Prints the
share of queries whose approximate top-10 equals the exact top-10 (same ids, same order),
recall@10, the largest similarity difference on shared hits, label precision@10 of both, and
whether a snapshot save + load answers identically. Last line: JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

K = 10


def main() -> int:
    from spread import ANIMALS, embed_animals

    from shared import vectors
    from shared.ann import AnnIndex, AnnParams, fetcher
    from shared.index import VectorIndex

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ANIMALS)
    parser.add_argument("--threshold", type=int, default=1000)
    args = parser.parse_args()

    real, labels = embed_animals(args.data, "efficientnet-lite0", "imagenet", 2)
    ids = [f"{i:032x}" for i in range(len(real))]
    stored = {i: vectors.encode(v / np.linalg.norm(v)) for i, v in zip(ids, real, strict=True)}
    source = vectors.decode_many([stored[i] for i in ids], real.shape[1])  # what Redis gives back
    exact = VectorIndex(real.shape[1])
    exact.upsert(ids, source)
    fetch = fetcher(lambda wanted: [stored.get(i) for i in wanted], vectors.decode_many, real.shape[1])
    params = AnnParams(threshold=args.threshold, background=False)
    chunks = [(ids[s : s + 500], source[s : s + 500]) for s in range(0, len(ids), 500)]
    # As a worker builds a replica from Redis (trained on the whole collection) ...
    approx = AnnIndex.bulk(real.shape[1], len(ids), chunks, fetch, params)
    # ... and as a running replica grows into it (trained when it crossed the threshold).
    grown = AnnIndex(real.shape[1], fetch, params)
    for chunk_ids, chunk in chunks:
        grown.upsert(chunk_ids, chunk)
    assert not approx.exact and not grown.exact

    def answer(index) -> tuple[list[list[tuple[str, float]]], float]:
        t0 = time.perf_counter()
        out = [index.search(source[r], K, exclude=ids[r]) for r in range(len(ids))]
        return out, (time.perf_counter() - t0) / len(ids) * 1e3

    want, exact_ms = answer(exact)
    got, approx_ms = answer(approx)
    got_grown, _ = answer(grown)
    buffer = io.BytesIO()
    approx.save(buffer)
    reloaded = AnnIndex.load(buffer.getvalue(), fetch)
    again, _ = answer(reloaded)

    label_of = dict(zip(ids, labels, strict=True))

    def precision(answers: list[list[tuple[str, float]]]) -> float:
        return float(np.mean([np.mean([label_of[i] == labels[r] for i, _ in a]) for r, a in enumerate(answers)]))

    def identical(answers: list[list[tuple[str, float]]]) -> float:
        return float(np.mean([[i for i, _ in g] == [i for i, _ in w] for g, w in zip(answers, want, strict=True)]))

    def recall(answers: list[list[tuple[str, float]]]) -> float:
        return float(
            np.mean([len({i for i, _ in g} & {i for i, _ in w}) / K for g, w in zip(answers, want, strict=True)])
        )

    diff = max((abs(s - dict(w)[i]) for g, w in zip(got, want, strict=True) for i, s in g if i in dict(w)), default=0.0)
    figures = {
        "images": len(ids),
        "queries": len(ids),
        "ivf_lists": approx._ann.nlist,
        "top10_identical": round(identical(got), 4),
        "recall_at_10": round(recall(got), 4),
        "grown_ivf_lists": grown._ann.nlist,
        "grown_top10_identical": round(identical(got_grown), 4),
        "grown_recall_at_10": round(recall(got_grown), 4),
        "max_similarity_diff": float(f"{diff:.2e}"),
        "precision_at_10_exact": round(precision(want), 4),
        "precision_at_10_ann": round(precision(got), 4),
        "snapshot_reload_identical": float(np.mean([a == g for a, g in zip(again, got, strict=True)])),
        "exact_ms": round(exact_ms, 3),
        "ann_ms": round(approx_ms, 3),
    }
    for key, value in figures.items():
        print(f"{key:28s} {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
