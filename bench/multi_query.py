"""Multi-example queries on the animals photos: does "like this cat, unlike that dog" keep dogs out?

    python bench/multi_query.py --data ../shared/datasets/animals --queries 300

Embeds the 3,000 labelled photos with EfficientNet-Lite0 (ImageNet weights; cached under /tmp by
bench/spread.py), then ranks the collection exactly with the worker's own combination
(`worker.search.searching.combine`: normalise(mean_w(positive) - 0.5 * mean_w(negative)), examples
excluded) and counts dogs in the top 10, for `--queries` random draws of P cats and N dogs:
the cats alone, the cats with the dogs as negatives, and the first version's plain sums
(sum(positive) - sum(negative)) as the baseline. Then the hard case: every cat whose own top 10
shows dogs, searched again with the first dog shown as the negative example (the way a user
says "less like that").
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

from worker.search.searching import combine  # noqa: E402


def top10(matrix: np.ndarray, query: np.ndarray, skip: set[int]) -> list[int]:
    order = np.argsort(-(matrix @ query), kind="stable")
    return [int(i) for i in order if int(i) not in skip][:10]


def _sums(matrix: np.ndarray, pos, neg) -> np.ndarray:
    q = matrix[pos].sum(0) - matrix[neg].sum(0)
    return q / np.linalg.norm(q)


def _stats(counts: list[int]) -> dict:
    return {
        "dogs_in_top10": round(float(np.mean(counts)), 3),
        "queries_without_dogs": round(float(np.mean(np.array(counts) == 0)), 3),
    }


def run(data: Path, queries: int, seed: int = 0) -> dict:
    vectors, labels = embed_animals(data, "efficientnet-lite0", "imagenet", 2)
    matrix = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    cats, dogs = np.flatnonzero(labels == "cats"), np.flatnonzero(labels == "dogs")
    rng = np.random.default_rng(seed)
    out: dict = {"queries": queries}

    def dogs_in(q: np.ndarray, skip: set[int]) -> int:
        return sum(labels[i] == "dogs" for i in top10(matrix, q, skip))

    for n_pos, n_neg in ((1, 1), (1, 3), (3, 3)):
        alone, combined, sums = [], [], []
        for _ in range(queries):
            pos = rng.choice(cats, n_pos, replace=False)
            neg = rng.choice(dogs, n_neg, replace=False)
            skip = {int(i) for i in (*pos, *neg)}
            alone.append(dogs_in(combine([(matrix[i], 1.0) for i in pos], []), skip))
            both = combine([(matrix[i], 1.0) for i in pos], [(matrix[i], 1.0) for i in neg])
            combined.append(dogs_in(both, skip))
            sums.append(dogs_in(_sums(matrix, pos, neg), skip))
        out[f"{n_pos}_cats_{n_neg}_dogs"] = {
            "cats_only": _stats(alone),
            "with_negatives": _stats(combined),
            "plain_sums": _stats(sums),
        }
    alone, combined, sums = [], [], []
    for cat in cats:
        shown = [i for i in top10(matrix, matrix[cat], {cat}) if labels[i] == "dogs"]
        if not shown:
            continue
        skip = {int(cat), shown[0]}
        alone.append(dogs_in(matrix[cat], skip))
        combined.append(dogs_in(combine([(matrix[cat], 1.0)], [(matrix[shown[0]], 1.0)]), skip))
        sums.append(dogs_in(_sums(matrix, [cat], [shown[0]]), skip))
    out["cats_showing_dogs"] = {
        "queries": len(alone),
        "cat_only": _stats(alone),
        "first_dog_as_negative": _stats(combined),
        "plain_sums": _stats(sums),
    }
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.queries)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
