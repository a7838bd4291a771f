"""Acceptance check for the foundation: index N real photos in ONE request, then search with
re-encoded copies (80 % size, JPEG quality 70) and count how often the original is top-1.

    python bench/reencode_check.py --url http://localhost:8000 --data ../shared/datasets/animals
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Service, labelled_images, reencode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://localhost:8000")
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/animals"))
    parser.add_argument("--count", type=int, default=200)
    parser.add_argument("--queries", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    chosen = rng.sample(labelled_images(args.data), args.count)
    files = [(path.name, path.read_bytes()) for path, _ in chosen]
    service = Service(args.url)
    collection = f"reencode-{uuid.uuid4().hex[:8]}"
    started = time.perf_counter()
    job = service.index(collection, files)
    took = time.perf_counter() - started
    print(
        f"indexed {job['progress']['done']}/{args.count} photos in one request: {job['status']}, "
        f"{took:.1f}s ({args.count / took:.1f} images/s end to end)"
    )
    hits = 0
    for name, data in rng.sample(files, args.queries):
        expected = hashlib.sha256(data).hexdigest()[:32]
        result = service.search(collection, reencode(data, 0.8, 70), k=5)["result"]
        top = result["matches"][0]
        hits += top["image_id"] == expected
        print(
            f"  {name:24s} top-1 {top['filename']:24s} similarity {top['similarity']:.4f} "
            f"{'OK' if top['image_id'] == expected else 'MISS'}"
        )
    print(f"re-encoded copies found as top-1: {hits}/{args.queries}")
    return 0 if hits == args.queries else 1


if __name__ == "__main__":
    raise SystemExit(main())
