"""A collection spread over a Redis Cluster against the same collection on one Redis (issue 23).

    python bench/cluster.py --vectors 1000000 --dim 1280 --shards 4 --json

Same run, same synthetic vectors (`bench/spread.py`), written with the worker's own store:

1. One Redis, the collection unsharded: Redis memory; the CPU seconds of building a replica of it
   (what every replica of the collection cost before shards had keys of their own, when each shard
   worker read the whole collection). Then the same collection in `--shards` shards on that Redis:
   search p50/p95 through the API by stored id (two workers, each serving half of the shards).
2. A Redis Cluster of 3 primaries (no replicas: memory is per primary), the collection in
   `--shards` shards: used memory per primary; the CPU seconds of building each shard's replica
   (it reads its own shard's keys only); search p50/p95 through the API, the same workers.

The last line printed is one JSON object. Plan memory: ~3.6 KiB per 1280-d vector in Redis (one
Redis, then the cluster, never both loaded), a replica of 1 M (~1 GB) in this process while it is
measured, and the workers' replicas of their shards.
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
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import scale  # noqa: E402
from scale import MODEL_OF_DIM, image_id, search  # noqa: E402


def load(client, collection: str, shards: int | None, n: int, dim: int, seed: int) -> float:
    """Create the collection with `shards` shards (None: it exists) and write N vectors with the
    worker's store."""
    return scale.load(client, f"file://{tempfile.mkdtemp()}", collection, n, dim, seed, shards)


def build_cpu_s(client, collection: str, shard: int, shards: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, vectors) of building one shard's replica in this process, as a
    worker does (reading the shard's keys)."""
    from shared.blobs import open_blob_store
    from worker.search.replica import ReplicaSet
    from worker.store import WorkerStore

    store = WorkerStore(client, open_blob_store(f"file://{tempfile.mkdtemp()}", fsync=False), 10**7, 3600)
    replicas = ReplicaSet(store)
    cpu, wall = time.process_time(), time.perf_counter()
    replica = replicas.sync(collection, shard, shards)
    assert replica is not None
    return time.process_time() - cpu, time.perf_counter() - wall, len(replica.index)


def api_latency(url: str, workdir: Path, collection: str, shards: int, n: int, queries: int, env: dict) -> dict:
    from tests.integration.services import start_api, start_worker

    half = max(1, shards // 2)
    groups = [",".join(map(str, range(0, half))), ",".join(map(str, range(half, shards)))]
    services = []
    try:
        api, base = start_api(url, workdir, access_log=False, **env)
        services.append(api)
        for i, group in enumerate(g for g in groups if g):
            services.append(start_worker(url, workdir, f"w{i}", ready_timeout=600, WORKER_SHARDS=group, **env))
        rows = np.random.default_rng(7).choice(n, queries + 1, replace=False)
        with httpx.Client(base_url=base, timeout=600) as http:
            # The first searches build the shards' replicas (a shard not ready within SHARD_TIMEOUT_S
            # is left out: `partial`): until every shard answers.
            first = time.perf_counter()
            while search(http, collection, image_id(int(rows[0])))["status"] != "succeeded":
                if time.perf_counter() - first > 900:
                    raise TimeoutError("the shards' replicas were not built within 15 minutes")
            first_s = time.perf_counter() - first
            latencies = []
            for r in rows[1:]:
                t = time.perf_counter()
                job = search(http, collection, image_id(int(r)))
                latencies.append((time.perf_counter() - t) * 1000)
                assert job["status"] == "succeeded" and job["result"]["matches"], job
        return {
            "search_p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "search_p95_ms": round(float(np.percentile(latencies, 95)), 1),
            "first_search_s": round(first_s, 1),
        }
    finally:
        for service in services:
            service.stop()


def used_memory(client) -> int:
    return int(client.info("memory")["used_memory"])


def run(n: int, dim: int, shards: int, queries: int, seed: int = 0, memory_only: bool = False) -> dict:
    from shared.connect import connect
    from tests.integration.services import start_cluster, start_redis

    out: dict = {"vectors": n, "dim": dim, "shards": shards}
    env = {"EMBEDDING_MODEL": MODEL_OF_DIM[dim], "LOG_MAXLEN": str(2 * n), "SNAPSHOT_EVERY": "0"}
    workdir = Path(tempfile.mkdtemp(prefix="cluster-bench-"))
    # 1. One Redis.
    single, url = start_redis(workdir)
    try:
        client = connect(url, "")
        base = used_memory(client)
        load_s = load(client, "flat", 1, n, dim, seed)
        out["single_redis_mb"] = round((used_memory(client) - base) / 2**20)
        if memory_only:
            return out | _cluster_memory(workdir, n, dim, shards, seed, out["single_redis_mb"])
        cpu, wall, held = build_cpu_s(client, "flat", 0, 1)
        out["unsharded_build"] = {"cpu_s": round(cpu, 1), "wall_s": round(wall, 1), "vectors": held}
        print(
            f"one Redis: loaded {n} in {load_s:.0f} s, {out['single_redis_mb']} MB; unsharded build {cpu:.1f} CPU s",
            flush=True,
        )
        client.flushall()
        load(client, "spread", shards, n, dim, seed)
        out["single_api"] = api_latency(url, workdir, "spread", shards, n, queries, env)
        print(f"one Redis, {shards} shards: {out['single_api']}", flush=True)
    finally:
        single.stop()
    # 2. A Redis Cluster of 3 primaries.
    (workdir / "cluster").mkdir()
    cluster = start_cluster(workdir / "cluster", replicas_per_primary=0, node_timeout_ms=5000)
    try:
        client = connect(cluster.url, "", cluster=True)
        out |= _load_on(cluster, client, n, dim, shards, seed, out["single_redis_mb"])
        builds = [build_cpu_s(client, "spread", s, shards) for s in range(shards)]
        out["shard_builds"] = [{"cpu_s": round(c, 1), "wall_s": round(w, 1), "vectors": v} for c, w, v in builds]
        out["shard_build_vs_unsharded"] = round(max(c for c, _, _ in builds) / out["unsharded_build"]["cpu_s"], 2)
        print(
            f"cluster: {out['cluster_mb_per_primary']} MB per primary; shard builds {out['shard_builds']}", flush=True
        )
        cluster_env = {**env, "REDIS_CLUSTER": "true"}
        broker, broker_url = start_redis(workdir)
        try:
            cluster_env["BROKER_URL"] = broker_url
            out["cluster_api"] = api_latency(cluster.url, workdir, "spread", shards, n, queries, cluster_env)
        finally:
            broker.stop()
        out["cluster_p50_vs_single"] = round(
            out["cluster_api"]["search_p50_ms"] / out["single_api"]["search_p50_ms"], 2
        )
    finally:
        cluster.stop()
    return out


def _cluster_memory(workdir: Path, n: int, dim: int, shards: int, seed: int, single_mb: int) -> dict:
    from shared.connect import connect
    from tests.integration.services import start_cluster

    (workdir / "cluster").mkdir()
    cluster = start_cluster(workdir / "cluster", replicas_per_primary=0, node_timeout_ms=5000)
    try:
        return _load_on(cluster, connect(cluster.url, "", cluster=True), n, dim, shards, seed, single_mb)
    finally:
        cluster.stop()


def _load_on(cluster, client, n: int, dim: int, shards: int, seed: int, single_mb: int) -> dict:
    """Create the sharded collection, spread its (empty) shards over the primaries
    (`worker.place_shards`), load it; its memory per primary."""
    from shared.collections import SCRIPTS, ops
    from shared.runner import SyncRunner
    from shared.schemas import utcnow
    from worker.place_shards import move_slot, plan

    SyncRunner(client, SCRIPTS).run(ops.create("spread", shards, utcnow()))
    for _, slot, target in plan(client, "spread", shards):
        move_slot(client, slot, target)
    nodes = {p: cluster.node(p) for p in cluster.primaries()}
    before = {p: used_memory(r) for p, r in nodes.items()}
    load(client, "spread", None, n, dim, seed)
    per_primary = [(used_memory(r) - before[p]) / 2**20 for p, r in nodes.items()]
    return {
        "cluster_mb_per_primary": sorted(round(m) for m in per_primary),
        "cluster_max_primary_vs_single": round(max(per_primary) / single_mb, 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=1280, choices=sorted(MODEL_OF_DIM))
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--memory-only", action="store_true", help="only the memory figures (one Redis, then the cluster)"
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = run(args.vectors, args.dim, args.shards, args.queries, memory_only=args.memory_only)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
