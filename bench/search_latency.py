"""Single-query search latency: upload, embed, top-k over a 10,000-image collection, result fetched
with `wait` — one client, sequential queries, one worker, ResNet50 (`INFERENCE_BACKEND=auto`).

The collection holds `--real` photos indexed through the API plus synthetic unit vectors written
with the worker's own store function (embedding 10,000 distinct photos is not what is measured
here, and the animals set has 3,000).

    python bench/search_latency.py --data ../shared/datasets/animals
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images  # noqa: E402


def fill(
    redis_url: str, blob_url: str, collection: str, count: int, dim: int, model: str, cluster: bool = False
) -> None:
    from PIL import Image

    from shared.blobs import open_blob_store
    from shared.connect import connect
    from shared.models.base import l2_normalise
    from shared.schemas import ImageRecord, utcnow
    from shared.settings import embedding_id
    from worker.store import Embedding, NewImage, WorkerStore

    blobs = open_blob_store(blob_url, fsync=False)
    store = WorkerStore(connect(redis_url, "", cluster), blobs, log_maxlen=1_000_000, data_ttl_s=3600)
    embedding = Embedding(model, embedding_id(model, 224), dim)
    thumb = io.BytesIO()
    Image.new("RGB", (8, 8), (128, 128, 128)).save(thumb, "JPEG")
    rng = np.random.default_rng(0)
    for start in range(0, count, 500):
        n = min(500, count - start)
        vectors = l2_normalise(rng.random((n, dim), dtype=np.float32))  # non-negative, like pooled ReLU features
        images = [
            NewImage(
                ImageRecord(
                    image_id=f"{start + i:032x}",
                    filename=f"synthetic_{start + i}.jpg",
                    format="JPEG",
                    width=8,
                    height=8,
                    size=0,
                    created_at=utcnow(),
                    job_id="synthetic",
                ),
                vec,
                thumb.getvalue(),
            )
            for i, vec in enumerate(vectors)
        ]
        store.add_images(collection, embedding, 0, images)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--size", type=int, default=10_000)
    parser.add_argument("--real", type=int, default=200)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="latency-"))
    redis_service, url = start_redis(workdir)
    cache = Path(tempfile.gettempdir()) / "simsearch-bench-cache"
    worker = start_worker(url, workdir, "lat", ready_timeout=600, SIMSEARCH_CACHE_DIR=str(cache))
    api, base = start_api(url, workdir)
    try:
        service = Service(base)
        photos = [p.read_bytes() for p, _ in labelled_images(args.data)]
        real, queries = photos[: args.real], photos[args.real : args.real + args.queries]
        assert service.index("latency", [(f"real{i}.jpg", b) for i, b in enumerate(real)])["status"] == "succeeded"
        fill(url, f"file://{workdir / 'blobs'}", "latency", args.size - args.real, 2048, "resnet50")
        for q in queries[:3]:  # the first search builds the worker's replica
            service.search("latency", q, args.k)
        latencies, sizes = [], set()
        for q in queries:
            started = time.perf_counter()
            job = service.search("latency", q, args.k)
            latencies.append((time.perf_counter() - started) * 1000)
            sizes.add(job["result"]["collection_size"])
        ms = np.array(latencies)
        print(f"collection size {sorted(sizes)}, {len(ms)} sequential queries, k={args.k}")
        print(
            f"latency ms: p50 {np.percentile(ms, 50):.1f}  p95 {np.percentile(ms, 95):.1f}  "
            f"p99 {np.percentile(ms, 99):.1f}  mean {ms.mean():.1f}  max {ms.max():.1f}"
        )
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
