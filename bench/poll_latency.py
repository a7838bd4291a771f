"""Round-trip latency of a search by stored id plus its long poll (`GET /v1/jobs/{id}?wait=10`),
one client, sequential, on an idle stack (one worker, random-weight ResNet50, 50 images).

    python bench/poll_latency.py [--queries 400]

Prints percentiles and, last, one JSON line. A long poll that misses the job's finish costs a
whole re-check interval (1 s), which shows as a p95/p99 near 1,000 ms.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--images", type=int, default=50)
    args = parser.parse_args()

    from tests.images import photo_bytes
    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="poll-"))
    redis_service, url = start_redis(workdir)
    worker = start_worker(url, workdir, "poll", ready_timeout=600)
    api, base = start_api(url, workdir, access_log=False)
    try:
        with httpx.Client(base_url=base, timeout=60) as http:
            files = [("files", (f"i{i}.jpg", photo_bytes(i, size=(96, 72)), "image/jpeg")) for i in range(args.images)]
            job = http.post("/v1/collections/poll/images", files=files).raise_for_status().json()
            result = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
            ids = result["result"]["created"]
            assert len(ids) == args.images, result

            def one(image_id: str) -> float:
                started = time.perf_counter()
                job = http.post("/v1/collections/poll/search", json={"image_id": image_id}).raise_for_status().json()
                done = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 10}).json()
                assert done["status"] == "succeeded", done
                return (time.perf_counter() - started) * 1000

            for image_id in ids[:10]:
                one(image_id)  # warm-up: the worker builds its replica
            ms = np.array([one(ids[i % len(ids)]) for i in range(args.queries)])
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
    figures = {
        "queries": len(ms),
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p95_ms": round(float(np.percentile(ms, 95)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
        "max_ms": round(float(ms.max()), 1),
        "over_500_ms": int((ms > 500).sum()),
    }
    print(
        f"{figures['queries']} searches by id + ?wait=: p50 {figures['p50_ms']} ms, p95 {figures['p95_ms']} ms, "
        f"p99 {figures['p99_ms']} ms, max {figures['max_ms']} ms, {figures['over_500_ms']} over 500 ms"
    )
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
