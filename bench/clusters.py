"""Clustering: purity on a labelled folder, and the time to cluster 100,000 vectors.

    python bench/clusters.py --data ../shared/datasets/animals              # efficientnet-lite0, auto K
    python bench/clusters.py --scale 100000                                 # synthetic 100k x 2048

With --data: auto K (2..10) on the first 50, 150 and all photos of each label (150, 450 and 3,000
animals), each in --orders row orders (a collection's rows come in hash order, and a single
k-means start depended on it). Purity: each cluster votes for its majority label; purity = images
matching their cluster's label / all images.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import labelled_images  # noqa: E402


def purity(labels: np.ndarray, truth: list[str]) -> float:
    majority = 0
    for c in set(labels.tolist()):
        majority += Counter(t for t, lab in zip(truth, labels, strict=True) if lab == c).most_common(1)[0][1]
    return majority / len(truth)


def embed_folder(data: Path, model: str, weights: str) -> tuple[np.ndarray, list[str]]:
    from shared.imaging import decode_image, to_model_input
    from shared.models.registry import get_model_spec
    from worker.model.inference import build_embedder
    from worker.runtime import _configure_tensorflow

    _configure_tensorflow(2)
    spec = get_model_spec(model)
    cache = Path.home() / ".cache" / "simsearch"
    embedder = build_embedder(spec.build(weights, spec.default_input_size, cache), "auto", "auto", cache, 2)
    items = labelled_images(data)
    vectors = []
    for start in range(0, len(items), 32):
        chunk = items[start : start + 32]
        batch = np.stack([to_model_input(decode_image(p.read_bytes()).image, embedder.input_size) for p, _ in chunk])
        vectors.append(embedder.embed(batch))
    return np.concatenate(vectors), [label for _, label in items]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--scale", type=int, help="cluster this many synthetic 2048-d vectors instead")
    parser.add_argument("--per-label", default="50,150,0", help="photos per label of each run (0: all)")
    parser.add_argument("--orders", type=int, default=5, help="row orders tried per size")
    args = parser.parse_args()

    from worker.analysis.clustering import cluster

    if args.scale:
        from shared.models.base import l2_normalise

        rng = np.random.default_rng(0)
        centers = rng.normal(size=(6, 2048)).astype(np.float32)
        truth = rng.integers(0, 6, args.scale)
        matrix = l2_normalise(centers[truth] + rng.normal(scale=1.2, size=(args.scale, 2048)).astype(np.float32))
        labels = [str(t) for t in truth]
    else:
        started = time.perf_counter()
        matrix, labels = embed_folder(args.data, args.model, args.weights)
        print(f"embedded {len(matrix)} images with {args.model} in {time.perf_counter() - started:.1f}s")
        for per in (int(x) for x in args.per_label.split(",")):
            truth = np.array(labels)
            rows = np.concatenate([np.flatnonzero(truth == t)[: per or None] for t in sorted(set(labels))])
            ks, took, purities = [], [], []
            for order in range(args.orders):
                perm = rows[np.random.default_rng(order).permutation(len(rows))]
                started = time.perf_counter()
                result = cluster(matrix[perm], None, 2, 10)
                took.append(time.perf_counter() - started)
                ks.append(result.k)
                purities.append(purity(result.labels, truth[perm].tolist()))
                if order == 0:
                    scores = ", ".join(f"{k}: {v:.3f}" for k, v in result.silhouette.items())
            print(
                f"{len(rows)} images, {args.orders} row orders: auto K {ks}; silhouette (first order) {{{scores}}}; "
                f"purity {min(purities):.4f}-{max(purities):.4f}; {np.mean(took):.1f} s per clustering"
            )
        return 0
    started = time.perf_counter()
    result = cluster(matrix, None, 2, 10)
    took = time.perf_counter() - started
    scores = ", ".join(f"{k}: {v:.3f}" for k, v in result.silhouette.items())
    print(f"{len(matrix)} vectors: auto K = {result.k} in {took:.1f}s; silhouette {{{scores}}}")
    print(f"cluster sizes {result.sizes}; purity {purity(result.labels, labels):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
