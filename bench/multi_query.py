"""Multi-example queries on the animals photos: does "like this cat, unlike that dog" keep dogs out?

    python bench/multi_query.py --data ../shared/datasets/animals --queries 200

Embeds the 3,000 labelled photos with EfficientNet-Lite0 (ImageNet weights; cached under /tmp by
bench/spread.py), then for `--queries` random (cat, dog) pairs ranks the collection exactly with
the worker's own combination (`worker.searching` semantics: normalise(sum w*positive - sum
w*negative), examples excluded) and counts dogs in the top 10: positive cat alone, and positive
cat + negative dog (weight 1). Prints both means and the share of queries with no dog at all;
then, for every cat whose own top 10 shows dogs, the same query with the first dog shown as the
negative example (the way a user says "less like that").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from spread import embed_animals  # noqa: E402


def top10(matrix: np.ndarray, query: np.ndarray, skip: set[int]) -> list[int]:
    order = np.argsort(-(matrix @ query), kind="stable")
    return [int(i) for i in order if int(i) not in skip][:10]


def run(data: Path, queries: int, seed: int = 0) -> dict:
    vectors, labels = embed_animals(data, "efficientnet-lite0", "imagenet", 2)
    matrix = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    cats, dogs = np.flatnonzero(labels == "cats"), np.flatnonzero(labels == "dogs")
    rng = np.random.default_rng(seed)
    alone, combined = [], []
    for cat, dog in zip(rng.choice(cats, queries), rng.choice(dogs, queries), strict=True):
        alone.append(sum(labels[i] == "dogs" for i in top10(matrix, matrix[cat], {cat})))
        q = matrix[cat] - matrix[dog]
        q /= np.linalg.norm(q)
        combined.append(sum(labels[i] == "dogs" for i in top10(matrix, q, {cat, dog})))
    # The way a user says "less like that": a cat query whose top 10 shows dogs, with the first
    # dog shown as the negative example.
    before, after = [], []
    for cat in cats:
        shown = top10(matrix, matrix[cat], {cat})
        shown_dogs = [i for i in shown if labels[i] == "dogs"]
        if not shown_dogs:
            continue
        q = matrix[cat] - matrix[shown_dogs[0]]
        q /= np.linalg.norm(q)
        before.append(len(shown_dogs))
        after.append(sum(labels[i] == "dogs" for i in top10(matrix, q, {cat, shown_dogs[0]})))
    return {
        "cat_queries_showing_dogs": len(before),
        "their_dogs_in_top10_before": round(float(np.mean(before)), 3),
        "their_dogs_in_top10_with_the_first_dog_as_negative": round(float(np.mean(after)), 3),
        "of_those_now_without_dogs": round(float(np.mean(np.array(after) == 0)), 3),
        "queries": queries,
        "dogs_in_top10_positive_only": round(float(np.mean(alone)), 3),
        "dogs_in_top10_with_negative_dog": round(float(np.mean(combined)), 3),
        "queries_without_dogs_positive_only": round(float(np.mean(np.array(alone) == 0)), 3),
        "queries_without_dogs_with_negative": round(float(np.mean(np.array(combined) == 0)), 3),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.queries)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
