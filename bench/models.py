"""The model table: each embedding model measured through the running service, in one run.

    python bench/models.py --data ../shared/datasets/animals \
        --models efficientnet-lite0 efficientnet-lite1 efficientnet-lite2

For each model (`name` or `name@input`), a fresh stack (Redis, one worker with that
`EMBEDDING_MODEL`, ImageNet weights, `INFERENCE_BACKEND=auto`, and the API) and a fresh collection:

1. **ingest**: every labelled photo uploaded in jobs of 300, all submitted at once, the clock
   stopped when the last job has `succeeded` (images/s end to end, after a 32-image warm-up);
2. **quality**: leave-one-out over the whole collection: every image searched by its stored id
   (`{"image_id"}`, which never returns the image itself), k = 10, `min_similarity=-1` so that
   ranking, not the no-match threshold, is judged: precision@10 and mAP@10;
3. **near duplicates**: `--edited` photos edited each way of bench/common.py EDITS (centre crops
   of 70 % and 50 %, rotation, grayscale, heavy JPEG, a caption, a mirror), each uploaded as a
   query: recall@1 (the original comes first);
4. **latency**: p50 / p95 of the by-id searches and of the uploaded queries (one client,
   sequential, POST then the job fetched with `?wait=`);
5. **worker memory**: proportional set size (PSS) of the worker's processes after all of it.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import EDITS, Service, labelled_images  # noqa: E402

K = 10


def content_id(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()[:32]


def worker_pss_mb(pid: int) -> float:
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_full_info().pss for p in [root, *root.children(recursive=True)]) / 2**20


def timed_search(http: httpx.Client, service: Service, collection: str, **request) -> tuple[dict, float]:
    started = time.perf_counter()
    resp = http.post(f"/v1/collections/{collection}/search", params={"k": K, "min_similarity": -1}, **request)
    job = service.wait(resp.raise_for_status().json()["job_id"])
    return job, (time.perf_counter() - started) * 1000


def ap_at_k(rel: list[bool], relevant: int) -> float:
    hits, total = 0, 0.0
    for i, r in enumerate(rel, start=1):
        if r:
            hits += 1
            total += hits / i
    return total / max(1, min(K, relevant))


def measure(model: str, items: list[tuple[Path, str]], rows: list[int], args) -> dict:
    from tests.integration.services import start_api, start_redis, start_worker

    name, _, side = model.partition("@")
    env = {"EMBEDDING_MODEL": name, "EMBEDDING_WEIGHTS": "imagenet", "RATE_LIMIT_PER_SECOND": "0"}
    env |= {"SIMSEARCH_CACHE_DIR": args.cache_dir, "BLOB_FSYNC": "true"} | ({"INPUT_SIZE": side} if side else {})
    workdir = Path(tempfile.mkdtemp(prefix="models-"))
    redis_service, url = start_redis(workdir)
    worker = start_worker(url, workdir, "bench", ready_timeout=900, **env)
    api, base = start_api(url, workdir, access_log=False, **env)
    try:
        service = Service(base)
        http = service.http
        blobs = [p.read_bytes() for p, _ in items]
        service.index("warmup", [(f"w{i}.jpg", b) for i, b in enumerate(blobs[:32])])
        collection = "animals"
        started = time.perf_counter()
        job_ids = []
        for i in range(0, len(blobs), 300):
            parts = [("files", (f"{j}.jpg", b, "image/jpeg")) for j, b in enumerate(blobs[i : i + 300], start=i)]
            job_ids.append(http.post(f"/v1/collections/{collection}/images", files=parts).raise_for_status().json())
        jobs = [service.wait(j["job_id"]) for j in job_ids]
        ingest_s = time.perf_counter() - started
        assert all(j["status"] == "succeeded" for j in jobs), [j["status"] for j in jobs]

        label_of: dict[str, str] = {}
        for data, (_, label) in zip(blobs, items, strict=True):
            label_of[content_id(data)] = label
        count = defaultdict(int)
        for label in label_of.values():
            count[label] += 1
        precisions, aps, by_id_ms = [], [], []
        for image_id, label in label_of.items():
            job, ms = timed_search(http, service, collection, json={"image_id": image_id})
            by_id_ms.append(ms)
            rel = [label_of[m["image_id"]] == label for m in job["result"]["matches"][:K]]
            precisions.append(sum(rel) / K)
            aps.append(ap_at_k(rel, count[label] - 1))
        recall, upload_ms = {}, []
        for edit_name, edit in EDITS.items():
            hits = 0
            for row in rows:
                files = {"file": ("q.jpg", edit(blobs[row]), "image/jpeg")}
                job, ms = timed_search(http, service, collection, files=files)
                upload_ms.append(ms)
                matches = job["result"]["matches"]
                hits += bool(matches) and matches[0]["image_id"] == content_id(blobs[row])
            recall[edit_name] = hits / len(rows)
        info = http.get(f"/v1/collections/{collection}").raise_for_status().json()
        return {
            "model": model,
            "images": len(label_of),
            "ingest_images_s": len(blobs) / ingest_s,
            "p10": float(np.mean(precisions)),
            "map10": float(np.mean(aps)),
            "near_dup_r1": recall,
            "by_id_p50_ms": float(np.percentile(by_id_ms, 50)),
            "by_id_p95_ms": float(np.percentile(by_id_ms, 95)),
            "upload_p50_ms": float(np.percentile(upload_ms, 50)),
            "upload_p95_ms": float(np.percentile(upload_ms, 95)),
            "worker_pss_mb": worker_pss_mb(worker.proc.pid),
            "collection_model": info.get("model"),
            "backend": backend_line(worker.log),
        }
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()


def backend_line(log: Path) -> str:
    for line in Path(log).read_text().splitlines():
        if "ready for" in line and "openvino" in line:
            return "openvino " + line.split("openvino", 1)[1].split()[0]
    return "tensorflow f32"


def table(results: list[dict]) -> str:
    edits = list(EDITS)
    head = ["model", "P@10", "mAP@10", *(f"R@1 {e}" for e in edits), "ingest img/s", "search p50/p95 ms (id)"]
    head += ["upload search p50/p95 ms", "worker PSS MB", "precision"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        cells = [r["model"], f"{r['p10']:.4f}", f"{r['map10']:.4f}"]
        cells += [f"{r['near_dup_r1'][e]:.3f}" for e in edits]
        cells += [f"{r['ingest_images_s']:.1f}", f"{r['by_id_p50_ms']:.1f} / {r['by_id_p95_ms']:.1f}"]
        cells += [f"{r['upload_p50_ms']:.1f} / {r['upload_p95_ms']:.1f}", f"{r['worker_pss_mb']:.0f}", r["backend"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument(
        "--models", nargs="+", default=["efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2"]
    )
    parser.add_argument("--edited", type=int, default=40)
    parser.add_argument("--limit", type=int, help="only the first N photos (a quick look)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "simsearch"))
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    items = labelled_images(args.data)[: args.limit]
    rows = random.Random(args.seed).sample(range(len(items)), args.edited)
    print(f"{len(items)} photos from {args.data}; {len(rows)} x {len(EDITS)} edited queries", flush=True)
    results = []
    for model in args.models:
        results.append(measure(model, items, rows, args))
        print(json.dumps(results[-1]), flush=True)
    print(table(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
