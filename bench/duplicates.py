"""Near-duplicate groups at scale (issue 14): time, and precision/recall of planted pairs.

    python bench/duplicates.py --vectors 100000 --planted 1000

`--vectors` synthetic 1280-d vectors spread like real Lite0 embeddings (bench/spread.py), plus
`--planted` near-copies of random ones (noise scaled so each copy has cosine ~0.97 with its
original, as a resized re-encode has), stored float16 as the service stores them. Runs the
worker's own `duplicate_groups` (IVF-SQ8 candidates, exact verification) at 0.95 and prints:
seconds, peak RSS, planted pairs found (recall), and of the pairs found how many are planted
(precision; the others are verified >= 0.95 exactly: the generator's own near neighbours).
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
from spread import synthetic  # noqa: E402

from worker.analysis.duplicates import duplicate_groups  # noqa: E402


def planted_copies(originals: np.ndarray, target: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(originals.shape).astype(np.float32)
    noise -= (noise * originals).sum(axis=1, keepdims=True) * originals  # orthogonal to the original
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    angle = np.arccos(target + rng.uniform(-0.01, 0.02, (len(originals), 1))).astype(np.float32)
    return np.cos(angle) * originals + np.sin(angle) * noise


def run(n: int, planted: int, threshold: float, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    base = synthetic(n, 1280, seed)
    picks = rng.choice(n, planted, replace=False)
    copies = planted_copies(base[picks], 0.97, rng)
    matrix = np.vstack([base, copies]).astype(np.float16)
    ids = [f"{i:032x}" for i in range(len(matrix))]
    truth = {frozenset((int(p), n + k)) for k, p in enumerate(picks)}
    exact = [float(matrix[p].astype(np.float32) @ matrix[n + k].astype(np.float32)) for k, p in enumerate(picks)]

    def blocks():
        for start in range(0, len(ids), 2000):
            yield ids[start : start + 2000], matrix[start : start + 2000].astype(np.float32)

    started = time.perf_counter()
    read, groups = duplicate_groups(blocks(), 1280, threshold)
    took = time.perf_counter() - started
    found = set()
    for _, members in groups:
        rows = [int(m, 16) for m, _ in members]
        found |= {frozenset((a, b)) for i, a in enumerate(rows) for b in rows[i + 1 :]}
    planted_found = len(truth & found)
    return {
        "vectors": read,
        "planted": planted,
        "planted_similarity_min": round(min(exact), 4),
        "threshold": threshold,
        "seconds": round(took, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "groups": len(groups),
        "recall": round(planted_found / len(truth), 4),
        "precision_planted": round(planted_found / max(1, len(found)), 4),
        "other_pairs_found": len(found - truth),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--planted", type=int, default=1000)
    parser.add_argument("--threshold", type=float, default=0.95)
    args = parser.parse_args()
    print(json.dumps(run(args.vectors, args.planted, args.threshold)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
