"""Retrieval quality on a labelled folder (`label/image` files, or `labels.csv` with path,label).

Indexes `--per-class` images of each class, queries with `--queries` other images per class and
prints precision@10, mAP@10 and near-duplicate recall@1 (query = an indexed image resized to 80 %,
JPEG quality 60 and flipped horizontally).

    # through the worker's own functions, in this process (decode -> model input -> embed -> top-k)
    python bench/quality.py --data ../shared/datasets/animals --model efficientnet-lite0 --in-process
    # through a running service (the model is whatever its workers run)
    python bench/quality.py --data ../shared/datasets/animals --url http://localhost:8000

mAP@10: per query, sum over ranks i <= 10 of precision@i at each relevant hit, divided by
min(10, relevant images in the index); averaged over queries.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images, reencode  # noqa: E402

K = 10


def split(items: list[tuple[Path, str]], per_class: int, queries: int, seed: int):
    by_label: dict[str, list[Path]] = defaultdict(list)
    for path, label in items:
        by_label[label].append(path)
    rng = random.Random(seed)
    indexed, held_out = [], []
    for label, paths in sorted(by_label.items()):
        paths = sorted(paths)
        rng.shuffle(paths)
        indexed += [(p, label) for p in paths[:per_class]]
        held_out += [(p, label) for p in paths[per_class : per_class + queries]]
    return indexed, held_out


def metrics(ranked_labels: list[list[str]], query_labels: list[str], relevant: dict[str, int]) -> tuple[float, float]:
    precisions, aps = [], []
    for ranked, label in zip(ranked_labels, query_labels, strict=True):
        rel = [lab == label for lab in ranked[:K]]
        precisions.append(sum(rel) / K)
        hits, ap = 0, 0.0
        for i, r in enumerate(rel, start=1):
            if r:
                hits += 1
                ap += hits / i
        aps.append(ap / min(K, relevant[label]))
    return float(np.mean(precisions)), float(np.mean(aps))


# -- in-process: the worker's functions ------------------------------------------------------------
def _embed_files(embed: Callable[[np.ndarray], np.ndarray], blobs: list[bytes], side: int, batch: int = 32):
    from shared.imaging import decode_image, to_model_input

    out = []
    for i in range(0, len(blobs), batch):
        arrays = np.stack([to_model_input(decode_image(b).image, side) for b in blobs[i : i + batch]])
        out.append(embed(arrays))
    return np.concatenate(out)


def variants(embedder) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    from shared.models.base import l2_normalise

    def flip_average(x: np.ndarray) -> np.ndarray:
        return l2_normalise(embedder.embed(x) + embedder.embed(x[:, :, ::-1]))

    return {"plain": embedder.embed, "flip-average": flip_average}


def run_in_process(args, indexed, held_out) -> None:
    from shared.index import VectorIndex
    from shared.models.registry import get_model_spec
    from worker.runtime import _configure_tensorflow

    _configure_tensorflow(args.threads)
    spec = get_model_spec(args.model)
    started = time.perf_counter()
    side = args.input_size or spec.default_input_size
    if args.pooling and spec.name.startswith("efficientnet-lite"):
        from shared.models.efficientnet_lite import VARIANTS, EfficientNetLiteEmbedder

        variant = VARIANTS[spec.name]
        embedder = EfficientNetLiteEmbedder(variant, args.weights, side, Path(args.cache_dir), pooling=args.pooling)
    else:
        from worker.model.inference import build_embedder

        network = spec.build(args.weights, side, Path(args.cache_dir))
        embedder = build_embedder(network, "auto", "auto", Path(args.cache_dir), args.threads)
    took = time.perf_counter() - started
    pooling = args.pooling or "default"
    print(f"model {spec.name} ({args.weights}, input {side}, pooling {pooling}) built in {took:.1f}s")
    index_blobs = [p.read_bytes() for p, _ in indexed]
    query_blobs = [p.read_bytes() for p, _ in held_out]
    rng = random.Random(args.seed + 1)
    dup_rows = rng.sample(range(len(indexed)), len(held_out))
    dup_blobs = [reencode(index_blobs[i], 0.8, 60, flip=True) for i in dup_rows]
    relevant = defaultdict(int)
    for _, label in indexed:
        relevant[label] += 1
    ids = [str(i) for i in range(len(indexed))]
    for name, embed in variants(embedder).items():
        if args.variant and name not in args.variant:
            continue
        t0 = time.perf_counter()
        index = VectorIndex(embedder.dim)
        index.upsert(ids, _embed_files(embed, index_blobs, embedder.input_size))
        rate = len(index_blobs) / (time.perf_counter() - t0)
        queries = _embed_files(embed, query_blobs, embedder.input_size)
        ranked = [[indexed[int(i)][1] for i, _ in index.search(q, K)] for q in queries]
        p10, map10 = metrics(ranked, [lab for _, lab in held_out], relevant)
        dups = _embed_files(embed, dup_blobs, embedder.input_size)
        r1 = np.mean([index.search(q, 1)[0][0] == str(row) for q, row in zip(dups, dup_rows, strict=True)])
        setup = f"{spec.name:18s} {args.weights:8s} {side} {pooling:7s} {name:12s}"
        print(
            f"{setup} precision@10 {p10:.4f}  mAP@10 {map10:.4f}  near-dup recall@1 {r1:.4f}  "
            f"({len(held_out)} queries, index {rate:.1f} images/s)"
        )


# -- through the service -------------------------------------------------------------------------
def run_service(args, indexed, held_out) -> None:
    service = Service(args.url)
    collection = f"quality-{uuid.uuid4().hex[:8]}"
    files = [(f"{label}__{p.name}", p.read_bytes()) for p, label in indexed]
    t0 = time.perf_counter()
    for i in range(0, len(files), 300):
        job = service.index(collection, files[i : i + 300])
        assert job["status"] == "succeeded", job["errors"][:3]
    print(f"indexed {len(files)} images in {time.perf_counter() - t0:.1f}s through {args.url}")
    label_of = {hashlib.sha256(data).hexdigest()[:32]: name.split("__")[0] for name, data in files}
    relevant = defaultdict(int)
    for _, label in indexed:
        relevant[label] += 1
    ranked, model = [], "?"
    for p, _ in held_out:
        result = service.search(collection, p.read_bytes(), K)["result"]
        model = result["model"]
        ranked.append([label_of[m["image_id"]] for m in result["matches"]])
    p10, map10 = metrics(ranked, [lab for _, lab in held_out], relevant)
    rng = random.Random(args.seed + 1)
    hits = 0
    rows = rng.sample(range(len(files)), len(held_out))
    for row in rows:
        top = service.search(collection, reencode(files[row][1], 0.8, 60, flip=True), 1)["result"]["matches"][0]
        hits += top["image_id"] == hashlib.sha256(files[row][1]).hexdigest()[:32]
    print(
        f"{model:20s} service   precision@10 {p10:.4f}  mAP@10 {map10:.4f}  "
        f"near-dup recall@1 {hits / len(rows):.4f}  ({len(held_out)} queries)"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--queries", type=int, default=50, help="held-out queries per class")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--url", help="measure a running service instead of in-process")
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--model", default="efficientnet-lite0")
    parser.add_argument("--weights", default="imagenet")
    parser.add_argument("--input-size", type=int)
    parser.add_argument(
        "--pooling",
        choices=["gem", "avg"],
        help="efficientnet-lite models only, run by TensorFlow (default: gem, worker backend)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", action="append", help="only these variants (plain, flip-average)")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "simsearch"))
    args = parser.parse_args()
    indexed, held_out = split(labelled_images(args.data), args.per_class, args.queries, args.seed)
    print(f"{len(indexed)} indexed, {len(held_out)} held-out queries from {args.data}")
    if args.url and not args.in_process:
        run_service(args, indexed, held_out)
    else:
        run_in_process(args, indexed, held_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
