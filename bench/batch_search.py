"""Batch search against one-by-one searches of the same uploaded images, in one run (issue 14).

    python bench/batch_search.py --data ../shared/datasets/animals --queries 1000

One worker (EfficientNet-Lite0, ImageNet weights), a fresh redis-server and the API. Indexes the
animals photos, then sends `--queries` of them re-encoded (80 %, JPEG q70) as queries: (1) one
at a time, each uploaded and waited for (`?wait=`), (2) as one batch-search job of up to 1,000
uploads, waited for, its results read as JSON lines. Prints queries/s of both, the ratio, and
how often both put the original first; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images  # noqa: E402

from tests.images import reencode  # noqa: E402

MODEL = "efficientnet-lite0"


def run(data: Path, count: int, cache_dir: Path) -> dict:
    from tests.integration.services import small_stack

    photos = [p.read_bytes() for p, _ in labelled_images(data)]
    step = max(1, len(photos) // count)
    picked = list(range(0, len(photos), step))[:count]
    queries = [(f"q{i:04d}.jpg", reencode(photos[i])) for i in picked]
    workdir = Path(tempfile.mkdtemp(prefix="batch-search-"))
    env = {"EMBEDDING_MODEL": MODEL, "SIMSEARCH_CACHE_DIR": str(cache_dir), "EMBEDDING_WEIGHTS": "imagenet"}
    out: dict = {"queries": len(queries), "collection": len(photos)}
    with small_stack(workdir, "bench", ready_timeout=600, **env) as base:
        service = Service(base)
        files = [(f"img{i:04d}.jpg", b) for i, b in enumerate(photos)]
        for start in range(0, len(files), 500):
            service.index("animals", files[start : start + 500])
        started = time.perf_counter()
        single_first = []
        for _, data in queries:
            result = service.search("animals", data, 1)["result"]
            single_first.append(result["matches"][0]["filename"] if result["matches"] else None)
        single = time.perf_counter() - started
        started = time.perf_counter()
        parts = [("files", (name, data, "image/jpeg")) for name, data in queries]
        accepted = service.http.post("/v1/collections/animals/search/batch", params={"k": 1}, files=parts).json()
        job = service.wait(accepted["job_id"])
        lines = service.http.get(f"/v1/jobs/{accepted['job_id']}/results", params={"format": "jsonl"}).text
        batch = time.perf_counter() - started
        assert job["status"] == "succeeded", job
        rows = [json.loads(x) for x in lines.splitlines()]
        expected = [f"img{i:04d}.jpg" for i in picked]
        out["one_by_one"] = {"seconds": round(single, 1), "queries_s": round(len(queries) / single, 1)}
        out["batch"] = {"seconds": round(batch, 1), "queries_s": round(len(queries) / batch, 1)}
        out["speedup"] = round(single / batch, 2)
        out["original_first_one_by_one"] = round(
            sum(a == b for a, b in zip(single_first, expected, strict=True)) / len(expected), 3
        )
        first = [r["matches"][0]["filename"] if r and r["matches"] else None for r in rows]
        out["original_first_batch"] = round(
            sum(a == b for a, b in zip(first, expected, strict=True)) / len(expected), 3
        )
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "simsearch")
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.queries, args.cache_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
