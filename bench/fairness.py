"""Fair shares with one worker (issue 21): alice queues five `{"all": true}` batch searches of her
3,000 animal photos, then bob uploads one image and searches; how long do bob's jobs take?

    python bench/fairness.py --data ../shared/datasets/animals

A fresh redis-server, one worker (EfficientNet-Lite0, ImageNet weights, concurrency 1) and the API
with two API keys. Prints bob's two times, how much of alice's work was still queued, and when
alice's batches finished; the last line is JSON.
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
from common import labelled_images  # noqa: E402

ALICE, BOB = "ssk_alice_bench_key", "ssk_bob_bench_key"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--batches", type=int, default=5)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "simsearch-bench-cache")
    args = parser.parse_args()
    photos = [p.read_bytes() for p, _ in labelled_images(args.data)]

    import httpx
    import redis

    from api.auth import hash_key
    from tests.integration.client_helpers import wait_job
    from tests.integration.services import start_api, start_redis, start_worker

    api_keys = json.dumps(
        [
            {"name": "alice", "sha256": hash_key(ALICE), "collections": ["alice-*"]},
            {"name": "bob", "sha256": hash_key(BOB), "collections": ["bob-*"]},
        ]
    )
    env = {
        "EMBEDDING_MODEL": "efficientnet-lite0",
        "EMBEDDING_WEIGHTS": "imagenet",
        "SIMSEARCH_CACHE_DIR": str(args.cache_dir),
        "RATE_LIMIT_PER_SECOND": "0",
    }
    workdir = Path(tempfile.mkdtemp(prefix="fairness-"))
    redis_service, url = start_redis(workdir)
    worker = start_worker(url, workdir, "fair", 600, **env)
    api, base = start_api(url, workdir, access_log=False, API_KEYS=api_keys, **env)
    out: dict = {"images": len(photos), "batches": args.batches, "k": args.k}
    try:
        alice = httpx.Client(base_url=base, headers={"authorization": f"Bearer {ALICE}"}, timeout=600)
        bob = httpx.Client(base_url=base, headers={"authorization": f"Bearer {BOB}"}, timeout=600)
        for start in range(0, len(photos), 500):
            files = [
                ("files", (f"a{i}.jpg", photos[i], "image/jpeg")) for i in range(start, min(start + 500, len(photos)))
            ]
            job = wait_job(alice, alice.post("/v1/collections/alice-big/images", files=files).json()["job_id"], 600)
            assert job["status"] == "succeeded", job["errors"][:3]
        seed = bob.post("/v1/collections/bob-pets/images", files=[("files", ("b0.jpg", photos[0], "image/jpeg"))])
        wait_job(bob, seed.json()["job_id"])

        queued_at = time.monotonic()
        backlog = [
            alice.post("/v1/collections/alice-big/search/batch", params={"k": args.k}, json={"all": True}).json()[
                "job_id"
            ]
            for _ in range(args.batches)
        ]
        time.sleep(2)  # the expansions list alice's queries into chunks
        r = redis.Redis.from_url(url)
        out["alice_chunks_queued"] = sum(r.llen(q) for q in ["index", *(f"index:{p}" for p in range(1, 10))])

        started = time.monotonic()
        upload = bob.post("/v1/collections/bob-pets/images", files=[("files", ("b1.jpg", photos[1], "image/jpeg"))])
        assert wait_job(bob, upload.json()["job_id"])["status"] == "succeeded"
        out["bob_upload_s"] = round(time.monotonic() - started, 2)
        started = time.monotonic()
        search = bob.post("/v1/collections/bob-pets/search", files={"file": ("q.jpg", photos[2], "image/jpeg")})
        assert wait_job(bob, search.json()["job_id"])["status"] == "succeeded"
        out["bob_search_s"] = round(time.monotonic() - started, 2)
        states = [alice.get(f"/v1/jobs/{j}").json() for j in backlog]
        out["alice_queries_done_when_bob_finished"] = sum(s["progress"]["done"] for s in states)
        out["alice_queries_total"] = sum(s["progress"]["total"] for s in states)
        for job_id in backlog:
            assert wait_job(alice, job_id, 1800)["status"] == "succeeded"
        out["alice_all_done_s"] = round(time.monotonic() - queued_at, 1)
        print(
            f"alice: {args.batches} x all ({len(photos)} queries each), {out['alice_chunks_queued']} chunks queued; "
            f"bob's upload {out['bob_upload_s']} s, search {out['bob_search_s']} s "
            f"(alice {out['alice_queries_done_when_bob_finished']}/{out['alice_queries_total']} done then); "
            f"alice's batches all done after {out['alice_all_done_s']} s"
        )
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
