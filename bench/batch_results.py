"""Reading a large batch-search result while another tenant uses the API (issue 21, finding 3).

    python bench/batch_results.py --queries 1000 --k 1000 --readers 3

A fresh redis-server and the API (no worker: the job and its rows are written straight into
Redis, shaped as workers write them, ~110 bytes a match). Then `--readers` clients page through
the result (`?limit=1000`, then JSON lines) over and over while another client sends small
requests (`GET /v1/collections/<other>`) as fast as it can. Prints that client's p50/p99 and the
API process's peak memory growth per reader; the last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def _fill(redis_url: str, queries: int, k: int) -> str:
    import redis

    from shared import keys
    from shared.jobs import JobLifecycle, Jobs
    from shared.jobs.scripts import SCRIPTS
    from shared.schemas import ItemOutcome, ItemStatus, JobInput, JobStatus, JobType

    client = redis.Redis.from_url(redis_url)
    jobs = Jobs(client, JobLifecycle(3600), SCRIPTS)
    job_id = uuid.uuid4().hex
    inputs = [JobInput(filename=f"q{i}.jpg", image_id=f"{i:032x}", size=0, stored=True) for i in range(queries)]
    jobs.create(job_id, JobType.batch_search, "big", {"k": k}, inputs)
    for start in range(0, queries, 50):
        rows = {}
        for q in range(start, min(queries, start + 50)):
            matches = [
                {"image_id": f"{q * k + m:032x}", "filename": f"img{m:06d}.jpg", "similarity": 0.9} for m in range(k)
            ]
            rows[str(q)] = json.dumps({"query": f"q{q}.jpg", "image_id": f"{q:032x}", "matches": matches})
        client.hset(keys.job_results(job_id), mapping=rows)
    outcomes = [
        (ItemOutcome(index=i, filename="", image_id="", status=ItemStatus.created), None) for i in range(queries)
    ]
    for start in range(0, queries, 1000):
        jobs.record_items(job_id, outcomes[start : start + 1000])
    jobs.finish(job_id, JobStatus.succeeded, {"queries": queries, "failed": 0})
    client.sadd(keys.COLLECTIONS, "small")
    client.hset(keys.collection("small"), mapping={"created_at": "2026-12-04T00:00:00Z"})
    return job_id


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--readers", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30)
    args = parser.parse_args()

    import httpx
    import psutil

    from tests.integration.services import start_api, start_redis

    workdir = Path(tempfile.mkdtemp(prefix="batch-results-"))
    redis_service, url = start_redis(workdir)
    api, base = start_api(url, workdir, access_log=False, RATE_LIMIT_PER_SECOND="0")
    out: dict = {"queries": args.queries, "k": args.k, "readers": args.readers}
    try:
        job_id = _fill(url, args.queries, args.k)
        proc = psutil.Process(api.proc.pid)
        api_procs = [proc, *proc.children(recursive=True)]
        base_rss = sum(p.memory_info().rss for p in api_procs)
        stop = threading.Event()
        pages: list[int] = []
        peak = [base_rss]

        def reader(n: int) -> None:
            with httpx.Client(base_url=base, timeout=120) as client:
                while not stop.is_set():
                    offset = 0
                    while offset < args.queries and not stop.is_set():
                        page = client.get(f"/v1/jobs/{job_id}/results", params={"offset": offset, "limit": 1000})
                        offset = page.json()["next_offset"]
                        pages.append(n)
                    with client.stream("GET", f"/v1/jobs/{job_id}/results", params={"format": "jsonl"}) as lines:
                        for _ in lines.iter_bytes():
                            if stop.is_set():
                                break

        def watch_memory() -> None:
            while not stop.is_set():
                peak[0] = max(peak[0], sum(p.memory_info().rss for p in api_procs))
                time.sleep(0.05)

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(args.readers)]
        threads.append(threading.Thread(target=watch_memory, daemon=True))
        for t in threads:
            t.start()
        latencies = []
        with httpx.Client(base_url=base, timeout=60) as other:
            deadline = time.monotonic() + args.seconds
            while time.monotonic() < deadline:
                started = time.perf_counter()
                assert other.get("/v1/collections/small").status_code == 200
                latencies.append((time.perf_counter() - started) * 1000)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        latencies.sort()
        out["other_requests"] = len(latencies)
        out["other_p50_ms"] = round(statistics.median(latencies), 1)
        out["other_p99_ms"] = round(latencies[int(len(latencies) * 0.99) - 1], 1)
        out["pages_read"] = len(pages)
        out["api_peak_growth_mb_per_reader"] = round((peak[0] - base_rss) / 2**20 / args.readers, 1)
        print(
            f"{args.readers} readers paging {args.queries} x k={args.k}: another client's requests "
            f"p50 {out['other_p50_ms']} ms, p99 {out['other_p99_ms']} ms ({len(latencies)} requests); "
            f"API peak growth {out['api_peak_growth_mb_per_reader']} MB per reader; {len(pages)} pages read"
        )
    finally:
        api.stop()
        redis_service.stop()
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
