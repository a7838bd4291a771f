"""The calibrated "no similar images" default, measured through the service (issue 20).

    python bench/no_match.py --data ../shared/datasets/animals

One worker (`--model`, default EfficientNet-Lite0; ImageNet weights), a fresh redis-server and the API; every query
is sent with no min_similarity, as a user's would be, in batch searches (k=1).

- all classes: 2/3 of the photos indexed, the held-out third queried: how many keep their top
  match (and how often it has their label); then 100 unrelated images (tests/images.py: noise,
  plain colours, gradients, text, drawings): how many are refused.
- one class missing, for each class: 2/3 of the other two indexed; the missing class's held-out
  photos (refused?) and the other two's (kept?).

Prints a table per scenario and, last, one JSON line.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images  # noqa: E402

from tests.images import unrelated_images  # noqa: E402


def split(items: list[tuple[Path, str]], seed: int) -> tuple[list, list]:
    """2/3 indexed, 1/3 held out, per label."""
    by_label: dict[str, list] = defaultdict(list)
    for item in items:
        by_label[item[1]].append(item)
    indexed, held = [], []
    rng = random.Random(seed)
    for label in sorted(by_label):
        group = sorted(by_label[label])
        rng.shuffle(group)
        cut = len(group) * 2 // 3
        indexed += group[:cut]
        held += group[cut:]
    return indexed, held


def batch(service: Service, collection: str, queries: list[tuple[str, bytes]]) -> list[dict]:
    rows: list[dict] = []
    for start in range(0, len(queries), 1000):
        parts = [("files", (name, data, "application/octet-stream")) for name, data in queries[start : start + 1000]]
        resp = service.http.post(f"/v1/collections/{collection}/search/batch", params={"k": 1}, files=parts)
        job = service.wait(resp.raise_for_status().json()["job_id"])
        assert job["status"] == "succeeded", job
        lines = service.http.get(f"/v1/jobs/{job['job_id']}/results", params={"format": "jsonl"}).text
        rows += [json.loads(line) for line in lines.splitlines()]
    return rows


def index(service: Service, collection: str, items: list[tuple[Path, str]]) -> dict[str, str]:
    """Index the photos; image file name -> label (the service names matches by file name)."""
    files = [(f"{label}__{p.name}", p.read_bytes()) for p, label in items]
    for start in range(0, len(files), 500):
        job = service.index(collection, files[start : start + 500])
        assert job["status"] == "succeeded", job["errors"][:3]
    return {name: label for (name, _), (_, label) in zip(files, items, strict=True)}


def scenario_all(service: Service, indexed: list, held: list) -> dict:
    labels = index(service, "all", indexed)
    rows = batch(service, "all", [(f"{label}__{p.name}", p.read_bytes()) for p, label in held])
    kept = [r for r in rows if r["matches"]]
    right = sum(labels[r["matches"][0]["filename"]] == r["query"].split("__")[0] for r in kept)
    unrelated = unrelated_images(20, seed=11)
    urows = batch(service, "all", [(f"{kind}-{i}.png", data) for i, (kind, data) in enumerate(unrelated)])
    refused = Counter(kind for (kind, _), r in zip(unrelated, urows, strict=True) if not r["matches"])
    kinds = Counter(kind for kind, _ in unrelated)
    return {
        "collection": len(indexed),
        "threshold": rows[0].get("threshold"),
        "held_out": len(rows),
        "kept": len(kept),
        "kept_rate": round(len(kept) / len(rows), 4),
        "top_match_same_label": round(right / max(1, len(kept)), 4),
        "unrelated_refused": {k: f"{refused[k]}/{kinds[k]}" for k in sorted(kinds)},
        "unrelated_refused_rate": round(sum(refused.values()) / len(unrelated), 4),
    }


def scenario_missing(service: Service, indexed: list, held: list, missing: str) -> dict:
    name = f"without-{missing}"
    index(service, name, [i for i in indexed if i[1] != missing])
    rows = batch(service, name, [(f"{label}__{p.name}", p.read_bytes()) for p, label in held])
    outside = [r for r in rows if r["query"].startswith(missing + "__")]
    inside = [r for r in rows if not r["query"].startswith(missing + "__")]
    return {
        "collection": sum(1 for i in indexed if i[1] != missing),
        "threshold": rows[0].get("threshold"),
        "missing_refused": f"{sum(not r['matches'] for r in outside)}/{len(outside)}",
        "missing_refused_rate": round(sum(not r["matches"] for r in outside) / len(outside), 4),
        "present_kept_rate": round(sum(bool(r["matches"]) for r in inside) / len(inside), 4),
    }


def calibration_cost(sizes: tuple[int, ...] = (1_000, 10_000, 100_000), dim: int = 1280) -> dict:
    """Seconds one calibration takes on a replica of clustered synthetic vectors, one thread (as a
    search runs): exact below ANN_THRESHOLD, approximate (IVF, re-ranked) above."""
    import time

    from threadpoolctl import threadpool_limits

    from bench.spread import synthetic
    from shared.ann import AnnIndex, AnnParams
    from worker.search.calibration import calibrate

    out = {}
    for n in sizes:
        index = AnnIndex(dim, params=AnnParams(background=False))
        vecs = synthetic(n, dim, seed=5)
        index.upsert([f"{i:032x}" for i in range(n)], vecs)
        with threadpool_limits(1):
            started = time.perf_counter()
            calibrate(index, None)
            out[n] = {"seconds": round(time.perf_counter() - started, 3), "exact": index.exact}
        print(f"calibration at {n:,} vectors x {dim} ({'exact' if index.exact else 'ann'}): {out[n]['seconds']:.3f} s")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--percentile", type=float, help="the workers' NO_MATCH_PERCENTILE (default: theirs)")
    parser.add_argument("--skip-cost", action="store_true", help="leave out the calibration cost at scale")
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "simsearch-bench-cache")
    args = parser.parse_args()
    items = labelled_images(args.data)
    indexed, held = split(items, args.seed)
    from tests.integration.services import small_stack

    env = {"EMBEDDING_MODEL": args.model, "EMBEDDING_WEIGHTS": "imagenet", "RATE_LIMIT_PER_SECOND": "0"}
    env["SIMSEARCH_CACHE_DIR"] = str(args.cache_dir)
    if args.percentile is not None:
        env["NO_MATCH_PERCENTILE"] = str(args.percentile)
    out: dict = {"data": str(args.data), "images": len(items)}
    with small_stack(Path(tempfile.mkdtemp(prefix="no-match-")), "bench", ready_timeout=600, **env) as base:
        service = Service(base)
        out["all"] = scenario_all(service, indexed, held)
        a = out["all"]
        print(f"all classes: {a['collection']} indexed, threshold {a['threshold']}")
        print(f"  held-out photos keeping their top match: {a['kept']}/{a['held_out']} = {a['kept_rate']:.2%}")
        print(f"  ... whose top match has their label: {a['top_match_same_label']:.2%}")
        print(f"  unrelated images refused: {a['unrelated_refused']} = {a['unrelated_refused_rate']:.2%}")
        for missing in sorted({label for _, label in items}):
            s = out[f"without_{missing}"] = scenario_missing(service, indexed, held, missing)
            print(
                f"without {missing}: {s['collection']} indexed, threshold {s['threshold']['value']:.3f}; "
                f"{missing} refused {s['missing_refused']} = {s['missing_refused_rate']:.2%}; "
                f"the others kept {s['present_kept_rate']:.2%}"
            )
    if not args.skip_cost:
        out["calibration_cost"] = calibration_cost()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
