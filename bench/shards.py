"""One shard on one worker against N shards on N workers: per-worker memory and search latency.

    python bench/shards.py --vectors 1000000 --dim 1280 --shards 4 --json

Loads the same N synthetic vectors (bench/spread.py, as bench/scale.py) into two collections of one
real Redis: `one` (1 shard) and `split` (`--shards`, created with PUT /v1/collections/split).
Then, for each: starts the workers (1 worker serving every shard, or one worker per shard with
WORKER_SHARDS=i, all --concurrency 1; with --search-only the shard workers load no model),
answers one warm-up search (the replicas are built), runs
`--queries` sequential searches by stored id with `?wait=` through the API, and reads each
worker's pool-process RSS; the workers are stopped before the next configuration. Prints both
configurations and the ratios (the targets: per-worker RSS <= 30 % of one worker's, p50 <= 1.5x);
the last line is JSON. Plan memory: Redis ~3.6 GB per million 1280-d vectors per collection (7.3 GB
here), each worker ~0.7 GB plus its share of the index.
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
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from scale import MODEL_OF_DIM, image_id, load, pool_rss_mb, search  # noqa: E402


def cpu_s(pids: list[int]) -> float:
    """CPU seconds used so far by these processes and their children (pool processes)."""
    total = 0.0
    for pid in pids:
        proc = psutil.Process(pid)
        for p in [proc, *proc.children(recursive=True)]:
            times = p.cpu_times()
            total += times.user + times.system
    return total


def measure(http: httpx.Client, collection: str, rows: np.ndarray, pids: list[int]) -> dict:
    started = time.perf_counter()
    # The first searches build the replicas (minutes at 1 M); a sharded one ends `partial` at the
    # shard timeout meanwhile: ask again until every shard answers.
    while search(http, collection, image_id(int(rows[0])))["status"] != "succeeded":
        assert time.perf_counter() - started < 1800, "the replicas were not built within 30 minutes"
    warm = time.perf_counter() - started
    latencies = []
    cpu_before = cpu_s(pids)
    for r in rows:
        t = time.perf_counter()
        job = search(http, collection, image_id(int(r)))
        latencies.append((time.perf_counter() - t) * 1000)
        assert job["status"] == "succeeded", job
    ms = np.array(latencies)
    cpu_ms = (cpu_s(pids) - cpu_before) / len(rows) * 1000
    return {
        # API + workers + Redis: on a host with fewer cores than processes, latency can not fall
        # below this divided by the cores.
        "cpu_ms_per_search": round(cpu_ms, 1),
        "search_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "search_p95_ms": round(float(np.percentile(ms, 95)), 1),
        "first_search_s": round(warm, 1),
    }


def run(n: int, dim: int, shards: int, queries: int, seed: int = 0, search_only: bool = False) -> dict:
    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="shards-"))
    redis_service, url = start_redis(workdir)
    env = {"EMBEDDING_MODEL": MODEL_OF_DIM[dim], "LOG_MAXLEN": str(2 * n), "SHARD_TIMEOUT_S": "20"}
    services = []
    out: dict = {"vectors": n, "dim": dim, "shards": shards, "search_only": search_only}
    try:
        api, base = start_api(url, workdir, access_log=False, **env)
        services.append(api)
        with httpx.Client(base_url=base, timeout=600) as http:
            assert http.put("/v1/collections/split", json={"shards": shards}).status_code == 201
            for name in ("one", "split"):
                took = load(url, f"file://{workdir / 'blobs'}", name, n, dim, seed)
                print(f"loaded {n} x {dim} into {name} in {took:.0f}s", flush=True)
            rows = np.random.default_rng(seed + 1).choice(n, queries, replace=False)
            configurations = (("one", "one", ["all"]), ("split", "split", [str(i) for i in range(shards)]))
            for label, collection, groups in configurations:
                # --search-only: the shard workers load no model (WORKER_EMBEDS=false); searches by
                # stored id need none, and embedding would be another worker's job.
                role = {"WORKER_EMBEDS": "false"} if search_only and label == "split" else {}
                workers = [
                    start_worker(url, workdir, f"{label}{i}", ready_timeout=600, WORKER_SHARDS=g, **env, **role)
                    for i, g in enumerate(groups)
                ]
                try:
                    pids = [api.proc.pid, redis_service.proc.pid, *(w.proc.pid for w in workers)]
                    figures = measure(http, collection, rows, pids)
                    figures["worker_rss_mb"] = [round(pool_rss_mb(w.proc.pid)) for w in workers]
                finally:
                    for w in workers:
                        w.stop()
                out[label] = figures
                print(f"{label}: {figures}", flush=True)
    finally:
        for service in services:
            service.stop()
        redis_service.stop()
    out["rss_ratio"] = round(max(out["split"]["worker_rss_mb"]) / out["one"]["worker_rss_mb"][0], 3)
    out["p50_ratio"] = round(out["split"]["search_p50_ms"] / out["one"]["search_p50_ms"], 3)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--dim", type=int, choices=sorted(MODEL_OF_DIM), default=1280)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--search-only", action="store_true", help="shard workers without a model")
    parser.add_argument("--json", action="store_true", help="the figures as JSON (always the last line)")
    args = parser.parse_args()
    print(json.dumps(run(args.vectors, args.dim, args.shards, args.queries, args.seed, args.search_only)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
