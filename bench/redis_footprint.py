"""Redis bytes per image: real photos indexed through the API (one worker, EfficientNet-Lite0 by
default; random weights — the vector's size, not its quality, is what is measured here).

    python bench/redis_footprint.py --data ../shared/datasets/animals --images 1000

Measures Redis `used_memory` before and after indexing (after the job records, which expire, are
deleted), plus `MEMORY USAGE` of each of the collection's keys. Prints one JSON line last.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import httpx
import redis

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import labelled_images  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--model", default="efficientnet-lite0")
    args = parser.parse_args()

    from shared import keys
    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="footprint-"))
    redis_service, url = start_redis(workdir)
    env = {"EMBEDDING_MODEL": args.model}
    worker = start_worker(url, workdir, "fp", ready_timeout=600, **env)
    api, base = start_api(url, workdir, access_log=False, **env)
    r = redis.Redis.from_url(url)
    try:
        photos = [p.read_bytes() for p, _ in labelled_images(args.data)[: args.images]]
        r.memory_purge()
        before = r.info("memory")["used_memory"]
        with httpx.Client(base_url=base, timeout=600) as http:
            for start in range(0, len(photos), 200):
                files = [
                    ("files", (f"p{start + i}.jpg", b, "image/jpeg")) for i, b in enumerate(photos[start : start + 200])
                ]
                job = http.post("/v1/collections/fp/images", files=files).raise_for_status().json()
                done = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
                while done["status"] not in ("succeeded", "partial", "failed"):
                    done = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
        count = r.hlen(keys.images("fp"))
        for key in r.scan_iter("ss:job:*"):  # job records expire (JOB_TTL_SECONDS): not per-image cost
            r.delete(key)
        r.memory_purge()
        after = r.info("memory")["used_memory"]
        per_key = {k.decode(): r.memory_usage(k) for k in r.scan_iter("ss:c:fp*")}
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
    per_image = (after - before) / max(count, 1)
    grew = (after - before) / 1024
    print(f"{count} images ({args.model}): Redis grew {grew:.0f} KiB, {per_image / 1024:.2f} KiB per image")
    for key, size in sorted(per_key.items(), key=lambda kv: -kv[1]):
        print(f"  {key}: {size / 1024:.0f} KiB ({size / max(count, 1):.0f} B per image)")
    print(json.dumps({"images": count, "model": args.model, "redis_bytes_per_image": round(per_image)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
