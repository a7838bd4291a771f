"""Which model, input size and pooling retrieve best: measured in-process, leave-one-out.

    python bench/embedding_choice.py --data ../shared/datasets/animals \
        --runs efficientnet-lite0@256 efficientnet-lite2@224 efficientnet-lite2@260 efficientnet-lite2@292

For each model@size, every labelled photo (and the near-duplicate edits of `--edited` of them,
bench/common.py EDITS) goes through the worker's own decode and resize, then the network up to its
last feature map (OpenVINO float32, or TensorFlow where OpenVINO is missing). The map is pooled in
numpy several ways:

- `gem3`: generalised mean, p = 3: what the service computes today;
- `gem4`: the same with p = 4 (leans further towards the strongest activations);
- `avg`: plain average pooling;
- `rmac`: regional GeM (R-MAC's regions: the whole map, then 2x2 and 3x3 overlapping windows, each
  pooled and L2-normalised, then summed): one vector of the same size, meant to keep what a crop
  of the photo would show.

Prints, per run and pooling: leave-one-out precision@10 and mAP@10 over every photo (the query
is each indexed photo, itself excluded), near-duplicate recall@1 per edit (the edited photo must
find its original first among all photos), the forward pass speed, and what a model's no-match
floor (shared/models/registry.py) rests on: the highest similarity 20 images each of noise, plain
colours and gradients (tests/images.py) reach against the photos (text and drawings printed too),
and how often a photo's closest among 10 random others is above it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import EDITS, labelled_images  # noqa: E402

from tests.images import unrelated_images  # noqa: E402

K = 10


def leave_one_out(vectors: np.ndarray, labels: np.ndarray, queries: np.ndarray | None = None) -> tuple[float, float]:
    """precision@10 and mAP@10 with every photo as a query against all the others (`queries`:
    the photos' query-side vectors, where they differ from the indexed ones)."""
    sims = (vectors if queries is None else queries) @ vectors.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argpartition(-sims, K, axis=1)[:, :K]
    order = np.take_along_axis(sims, top, axis=1).argsort(axis=1)[:, ::-1]
    ranked = np.take_along_axis(top, order, axis=1)
    rel = labels[ranked] == labels[:, None]
    precision = rel.mean(axis=1)
    hits = np.cumsum(rel, axis=1)
    relevant = np.array([min(K, int((labels == lab).sum()) - 1) for lab in labels])
    ap = (rel * hits / np.arange(1, K + 1)).sum(axis=1) / np.maximum(relevant, 1)
    return float(precision.mean()), float(ap.mean())


def closest_of_random_others_above(vectors: np.ndarray, floor: float, seed: int) -> float:
    """How often a photo's best match among 10 random other photos is above `floor`: a tiny
    collection still answers a real photo, if the floor is right."""
    rng = np.random.default_rng(seed)
    n = len(vectors)
    hits = 0
    for i in range(n):
        others = rng.choice(np.delete(np.arange(n), i), 10, replace=False)
        hits += float((vectors[others] @ vectors[i]).max()) > floor
    return hits / n


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def gem(fmap: np.ndarray, p: float) -> np.ndarray:
    return np.power(np.mean(np.power(np.maximum(fmap, 1e-6), p), axis=(1, 2)), 1.0 / p)


def regions(h: int, w: int, levels: int = 3) -> list[tuple[int, int, int, int]]:
    """R-MAC's square regions: at level l, side 2 * min(h, w) / (l + 1), l windows per axis."""
    out = [(0, h, 0, w)]
    for level in range(2, levels + 1):
        side = max(1, round(2 * min(h, w) / (level + 1)))
        ys = np.linspace(0, h - side, level).round().astype(int)
        xs = np.linspace(0, w - side, level).round().astype(int)
        out += [(y, y + side, x, x + side) for y in ys for x in xs]
    return out


def rmac(fmap: np.ndarray, p: float = 3.0) -> np.ndarray:
    _, h, w, _ = fmap.shape
    total = np.zeros((fmap.shape[0], fmap.shape[3]), dtype=np.float64)
    for y0, y1, x0, x1 in regions(h, w):
        total += _normalise(gem(fmap[:, y0:y1, x0:x1, :], p))
    return total


POOLINGS = {
    "gem3": lambda f: gem(f, 3.0),
    "gem4": lambda f: gem(f, 4.0),
    "avg": lambda f: f.mean(axis=(1, 2)),
    "rmac": rmac,
}


def feature_map_runner(model: str, side: int, cache_dir: Path, threads: int):
    """The network up to its last (ReLU6) feature map, compiled once."""
    import keras

    from shared.models.efficientnet_lite import FEATURES_OUTPUT, VARIANTS, build_efficientnet_lite, preprocess

    features = build_efficientnet_lite(VARIANTS[model], False, input_size=side, weights="imagenet", cache_dir=cache_dir)
    fmap = keras.Model(features.input, features.get_layer(FEATURES_OUTPUT).input)
    try:
        import openvino as ov

        core = ov.Core()
        compiled = core.compile_model(
            ov.convert_model(fmap, input=[(-1, side, side, 3)]),
            "CPU",
            {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads},
        )
        request = compiled.create_infer_request()
        backend = "openvino f32"

        def run(x: np.ndarray) -> np.ndarray:
            return np.array(request.infer({0: preprocess(x)})[0], dtype=np.float32)
    except ImportError:
        backend = "tensorflow f32"

        def run(x: np.ndarray) -> np.ndarray:
            return np.asarray(fmap(preprocess(x), training=False), dtype=np.float32)

    return run, backend


def measure(model: str, side: int, blobs: list[bytes], queries: dict[str, list[bytes]], args) -> dict:
    from shared.imaging import decode_image, to_model_input
    from worker.runtime import _configure_tensorflow

    _configure_tensorflow(args.threads)

    def mapper(at: int):
        run, backend = feature_map_runner(model, at, Path(args.cache_dir), args.threads)
        run(np.zeros((1, at, at, 3), np.uint8))  # compile outside the timing

        def maps(items: list[bytes]) -> np.ndarray:
            out = []
            for i in range(0, len(items), 32):
                out.append(run(np.stack([to_model_input(decode_image(b).image, at) for b in items[i : i + 32]])))
            return np.concatenate(out)

        return maps, backend

    maps, backend = mapper(side)
    started = time.perf_counter()
    base = maps(blobs)
    rate = len(blobs) / (time.perf_counter() - started)
    edited = {name: maps(items) for name, items in queries.items()}
    out = {"backend": backend, "images_s": rate, "maps": base, "edited": edited}
    if args.query_side:
        # A second, smaller view of each query: what a crop shows enlarged appears at the indexed scale.
        small, _ = mapper(args.query_side)
        out["small_maps"] = small(blobs)
        out["small_edited"] = {name: small(items) for name, items in queries.items()}
    return out


def two_scale(pool, large: np.ndarray, small: np.ndarray) -> np.ndarray:
    return _normalise(_normalise(pool(large)) + _normalise(pool(small))).astype(np.float32)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--runs", nargs="+", default=["efficientnet-lite0@256", "efficientnet-lite2@260"])
    parser.add_argument("--edited", type=int, default=40, help="photos edited for the near-duplicate queries")
    parser.add_argument("--limit", type=int, help="only the first N photos (a quick look)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "simsearch"))
    parser.add_argument("--query-side", type=int, help="also try queries embedded at this side too, averaged")
    parser.add_argument("--floor", type=float, help="the share of photos above this (default: the unrelated max)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    items = labelled_images(args.data)[: args.limit]
    blobs = [p.read_bytes() for p, _ in items]
    labels = np.array([label for _, label in items])
    rows = random.Random(args.seed).sample(range(len(items)), args.edited)
    queries = {name: [edit(blobs[r]) for r in rows] for name, edit in EDITS.items()}
    unrelated = unrelated_images(20, seed=11)
    kinds = np.array([kind for kind, _ in unrelated])
    queries["unrelated"] = [data for _, data in unrelated]
    print(f"{len(items)} photos from {args.data}; {len(rows)} x {len(EDITS)} edited queries")
    results = []
    for run in args.runs:
        model, side = run.split("@")
        m = measure(model, int(side), blobs, queries, args)
        for pooling, pool in POOLINGS.items():
            vectors = _normalise(pool(m["maps"]).astype(np.float32))
            p10, map10 = leave_one_out(vectors, labels)
            recall = {}
            for name, fmap in m["edited"].items():
                q = _normalise(pool(fmap).astype(np.float32))
                if name == "unrelated":
                    best = (q @ vectors.T).max(axis=1)
                    by_kind = {kind: float(best[kinds == kind].max()) for kind in sorted(set(kinds))}
                    # The floor guards against noise, plain colours and gradients (text and
                    # drawings are what a calibrated collection threshold refuses).
                    unrelated_max = max(by_kind[k] for k in ("noise", "colour", "gradient"))
                    continue
                recall[name] = float(np.mean((q @ vectors.T).argmax(axis=1) == np.array(rows)))
            above = closest_of_random_others_above(vectors, args.floor or unrelated_max, args.seed)
            row = {"model": model, "input": int(side), "pooling": pooling, "p10": p10, "map10": map10}
            row |= {"near_dup_r1": recall, "forward_images_s": m["images_s"], "backend": m["backend"]}
            row |= {"unrelated_max": unrelated_max, "unrelated_by_kind": by_kind, "closest_of_10_above_it": above}
            if args.query_side:
                q_all = two_scale(pool, m["maps"], m["small_maps"])
                row["two_scale_query"] = {"side": args.query_side, "p10": leave_one_out(vectors, labels, q_all)[0]}
                row["two_scale_query"]["near_dup_r1"] = {
                    name: float(
                        np.mean(
                            (two_scale(pool, m["edited"][name], m["small_edited"][name]) @ vectors.T).argmax(axis=1)
                            == np.array(rows)
                        )
                    )
                    for name in recall
                }
                print(f"{model}@{side} {pooling:5s} query also at {args.query_side}: {row['two_scale_query']}")
            results.append(row)
            edits = "  ".join(f"{name} {r:.3f}" for name, r in recall.items())
            print(
                f"{model}@{side} {pooling:5s} P@10 {p10:.4f}  mAP@10 {map10:.4f}  | R@1 {edits}  "
                f"| {m['images_s']:.1f} images/s ({m['backend']}) | noise/colour/gradient max "
                f"{unrelated_max:.3f}, closest of 10 above {args.floor or unrelated_max:.3f}: {above:.3f}; by kind "
                + " ".join(f"{k} {v:.3f}" for k, v in by_kind.items()),
                flush=True,
            )
    if args.json:
        print(json.dumps(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
