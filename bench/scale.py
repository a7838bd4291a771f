"""A collection at scale, through the real storage path, measured through the HTTP API.

    python bench/scale.py --vectors 1000000 --dim 1280 --json

Loads N synthetic unit vectors (`bench/spread.py`: a two-level Gaussian mixture fitted to real
EfficientNet-Lite0 embeddings of the animals photos) into a real Redis with the worker's own store
function (the Lua script an index chunk runs: records, float16 vectors, log); starts one real
worker and the API; then measures:

- search by stored id + `?wait=`, `--queries` sequential queries: p50 / p95 (after one warm-up
  search, which builds the worker's replica);
- recall@10 of those answers against exact float32 cosine on the generator's vectors (recomputed
  chunk by chunk here, so this process never holds N vectors);
- the worker process's RSS (the pool process that holds the replica) after the queries;
- the snapshot the worker then writes to the blob store (version, vectors);
- cold start: SIGKILL the worker, start a new one, time until a search is answered (the new
  worker loads the snapshot and replays the log after it); then `restart_identical`, the share
  of the first 20 queries whose top-10 after the restart equals the one before, in order;
- Redis bytes per image (used_memory growth while loading).

The last line printed is one JSON object. Plan memory: Redis ~3.6 KiB per 1280-d vector (float16
plus record and log entry); the worker ~1 GB at 1 M x 1280 (IVF codes, ids), and while it builds a
replica from the vectors a training sample of 65k float32 vectors (335 MB) on top.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import redis

from shared import keys

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

MODEL_OF_DIM = {1280: "efficientnet-lite0", 2048: "resnet50"}
BATCH = 1000


def image_id(row: int) -> str:
    # Like a content id (a SHA-256 prefix): spread over shards, as real ids are.
    return hashlib.sha256(int(row).to_bytes(8, "little")).hexdigest()[:32]


def load(
    client: redis.Redis, blob_url: str, collection: str, n: int, dim: int, seed: int, shards: int | None = None
) -> float:
    """Write N vectors with the worker's store function (into a collection created with `shards`
    shards, if given). Returns the seconds it took."""
    from spread import synthetic_chunks

    from shared.blobs import open_blob_store
    from shared.collections import ops
    from shared.schemas import ImageRecord, utcnow
    from shared.settings import embedding_id
    from worker.store import Embedding, NewImage, WorkerStore

    model = MODEL_OF_DIM[dim]
    spec_size = {"efficientnet-lite0": 256, "resnet50": 224}[model]
    store = WorkerStore(client, open_blob_store(blob_url, fsync=False), 2 * n, 3600)
    if shards is not None:
        store.data.run(ops.create(collection, shards, utcnow()))
    embedding = Embedding(model, embedding_id(model, spec_size), dim)
    started, row, now = time.perf_counter(), 0, utcnow()
    for chunk, _ in synthetic_chunks(n, dim, seed):
        for start in range(0, len(chunk), BATCH):
            part = chunk[start : start + BATCH]
            images = [
                # No job id: no rendition blob (the synthetic images have no pixels).
                NewImage(
                    ImageRecord(
                        image_id=image_id(row + i),
                        filename=f"s{row + i}.jpg",
                        format="JPEG",
                        width=1,
                        height=1,
                        size=0,
                        created_at=now,
                    ),
                    vec,
                )
                for i, vec in enumerate(part)
            ]
            store.add_images(collection, embedding, 0, images)
            row += len(part)
    return time.perf_counter() - started


def exact_top10(queries: np.ndarray, query_rows: np.ndarray, n: int, dim: int, seed: int) -> list[list[str]]:
    """Exact float32 cosine top-10 of each query over the generator's vectors, itself excluded."""
    from spread import synthetic_chunks

    best_scores = np.full((len(queries), 10), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(queries), 10), dtype=np.int64)
    row = 0
    for chunk, _ in synthetic_chunks(n, dim, seed):
        scores = queries @ chunk.T
        rows = np.arange(row, row + len(chunk))
        scores[rows[None, :] == query_rows[:, None]] = -np.inf
        merged_scores = np.concatenate([best_scores, scores], axis=1)
        merged_rows = np.concatenate([best_rows, np.broadcast_to(rows, scores.shape)], axis=1)
        top = np.argsort(-merged_scores, axis=1, kind="stable")[:, :10]
        best_scores = np.take_along_axis(merged_scores, top, axis=1)
        best_rows = np.take_along_axis(merged_rows, top, axis=1)
        row += len(chunk)
    return [[image_id(r) for r in rows] for rows in best_rows]


def query_vectors(rows: np.ndarray, n: int, dim: int, seed: int) -> np.ndarray:
    from spread import CHUNK, synthetic_chunks

    wanted = {int(r) for r in rows}
    found: dict[int, np.ndarray] = {}
    for c, (chunk, _) in enumerate(synthetic_chunks(n, dim, seed)):
        for r in wanted:
            if c * CHUNK <= r < c * CHUNK + len(chunk):
                found[r] = chunk[r - c * CHUNK]
    return np.stack([found[int(r)] for r in rows])


def pool_rss_mb(worker_pid: int) -> float:
    """RSS of the worker's pool process(es): where the replica lives."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == worker_pid:
                status = (stat.parent / "status").read_text()
                total += int(next(x.split()[1] for x in status.splitlines() if x.startswith("VmRSS:")))
        except (OSError, StopIteration, ValueError):
            continue
    return total / 1024


def search(
    http: httpx.Client, collection: str, image: str, timeout: float = 600, split: list | None = None, one: bool = False
) -> dict:
    """One search by stored id, its result fetched with `?wait=`; `split` collects (POST, wait) ms.
    `one`: `POST …/search?wait=` answers with the finished job in the same request."""
    started = time.perf_counter()
    params = {"wait": 30} if one else None
    resp = http.post(f"/v1/collections/{collection}/search", json={"image_id": image}, params=params)
    job = resp.raise_for_status().json()
    if resp.status_code == 200:
        return job
    posted = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = http.get(f"/v1/jobs/{job['job_id']}", params={"wait": 30}).json()
        if done["status"] in ("succeeded", "partial", "failed"):
            if split is not None:
                split.append(((posted - started) * 1000, (time.perf_counter() - posted) * 1000))
            return done
    raise TimeoutError(image)


def worker_stages(log: Path, collection: str, skip: int = 1, every: int = 1) -> dict[str, float]:
    """p50 ms per stage of the worker's searches into `collection` (after the first `skip`; of
    every `every`-th: the worker's side does not depend on how the client asked)."""
    per_stage: dict[str, list[float]] = {}
    entries = [
        entry
        for line in log.read_text().splitlines()
        if line.startswith("{")
        and (entry := json.loads(line)).get("message") == "answered a search"
        and entry.get("collection") == collection
    ][skip::every]
    for entry in entries:
        for name, seconds in entry.get("stages", {}).items():
            per_stage.setdefault(name, []).append(seconds * 1000)
    totals = [sum(e.get("stages", {}).values()) * 1000 for e in entries]
    out = {name: round(float(np.percentile(v, 50)), 3) for name, v in per_stage.items()}
    return out | {"worker_total": round(float(np.percentile(totals, 50)), 3) if totals else 0.0}


RESTART_QUERIES = 20  # answered again after the cold start: the same top-10 in the same order?


def wait_for_snapshot(client: redis.Redis, collection: str, timeout: float = 600) -> dict:
    """The snapshot the worker writes after its first answer (approximate replicas only)."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        pointer = {k.decode(): v.decode() for k, v in client.hgetall(keys.snapshot(collection, 0)).items()}
        if pointer:
            return {"version": int(pointer["version"]), "count": int(pointer["count"])}
        if time.monotonic() - started > 30 and not client.exists(keys.snapshot_lock(collection, 0)):
            break  # none after 30 s and none being written: the replica is exact, it writes none
        time.sleep(0.5)
    return {}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=20_000)
    parser.add_argument("--dim", type=int, choices=sorted(MODEL_OF_DIM), default=1280)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON (always last)")
    parser.add_argument("--skip-cold", action="store_true", help="only the searches (no snapshot, no restart)")
    parser.add_argument(
        "--baseline-tree",
        type=Path,
        help="a checkout of another version: its API and worker serve the same data first, then this tree's",
    )
    args = parser.parse_args()
    print(json.dumps(run(args.vectors, args.dim, args.queries, args.seed, args.skip_cold, args.baseline_tree)))
    return 0


def run(
    n: int, dim: int, queries: int, seed: int = 0, skip_cold: bool = False, baseline_tree: Path | None = None
) -> dict:
    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="scale-"))
    redis_service, url = start_redis(workdir)
    env = {"EMBEDDING_MODEL": MODEL_OF_DIM[dim], "LOG_MAXLEN": str(2 * n), "RATE_LIMIT_PER_SECOND": "0"}
    client = redis.Redis.from_url(url)
    workers = []
    try:
        before = client.info("memory")["used_memory"]
        load_s = load(client, f"file://{workdir / 'blobs'}", "scale", n, dim, seed)
        per_image = (client.info("memory")["used_memory"] - before) / n
        print(f"loaded {n} x {dim} in {load_s:.1f}s; Redis {per_image:.0f} B per image", flush=True)
        rows = np.random.default_rng(seed + 1).choice(n, queries, replace=False)
        if baseline_tree is not None:
            return compare(url, workdir, env, baseline_tree, rows, (n, dim, seed, per_image, load_s))
        api, base = start_api(url, workdir, access_log=False, **env)
        workers.append(api)
        with httpx.Client(base_url=base, timeout=600) as http:
            worker = start_worker(url, workdir, "scale", ready_timeout=600, **env)
            workers.append(worker)
            started = time.perf_counter()
            search(http, "scale", image_id(int(rows[0])))
            first_s = time.perf_counter() - started
            latencies, answers, split, one_request = [], [], [], []
            for k, r in enumerate(rows):
                # Both ways of asking, alternating which goes first: POST then GET ?wait=, and
                # one POST ?wait= that answers with the finished job.
                for one in (False, True) if k % 2 == 0 else (True, False):
                    t = time.perf_counter()
                    job = search(http, "scale", image_id(int(r)), split=None if one else split, one=one)
                    (one_request if one else latencies).append((time.perf_counter() - t) * 1000)
                    if not one:
                        answers.append([m["image_id"] for m in job["result"]["matches"]])
            rss = pool_rss_mb(worker.proc.pid)
            stages = worker_stages(worker.log, "scale", skip=1, every=2)
            asked_once = _asked_once(one_request)
            if skip_cold:
                return (
                    _figures(n, dim, latencies, split, stages, rss, answers, first_s, rows, seed, per_image, load_s)
                    | asked_once
                )
            snapshot = wait_for_snapshot(client, "scale")
            # Cold start: a new worker from Redis and the blob store (model load, then the replica
            # from its snapshot plus the log after it, or from the vectors if there is none).
            os.killpg(worker.proc.pid, signal.SIGKILL)
            worker.proc.wait(10)
            started = time.perf_counter()
            cold = start_worker(url, workdir, "cold", ready_timeout=600, **env)
            workers.append(cold)
            again = [search(http, "scale", image_id(int(rows[0])))]
            cold_s = time.perf_counter() - started
            again += [search(http, "scale", image_id(int(r))) for r in rows[1:RESTART_QUERIES]]
            before = [a[:10] for a in answers[:RESTART_QUERIES]]
            after = [[m["image_id"] for m in j["result"]["matches"]][:10] for j in again]
            identical = float(np.mean([a == b for a, b in zip(before, after, strict=True)]))
            cold_rss = pool_rss_mb(cold.proc.pid)
            restored = "restored replica of scale from a snapshot" in cold.log.read_text()
    finally:
        for service in workers:
            service.stop()
        redis_service.stop()
    return (
        _figures(n, dim, latencies, split, stages, rss, answers, first_s, rows, seed, per_image, load_s)
        | asked_once
        | {
            "cold_start_s": round(cold_s, 1),
            "snapshot": snapshot,
            "restored_from_snapshot": restored,
            "restart_identical": identical,
            "cold_worker_rss_mb": round(cold_rss),
        }
    )


def compare(url: str, workdir: Path, env: dict[str, str], baseline: Path, rows: np.ndarray, common: tuple) -> dict:
    """The same data served at once by two stacks (API and worker each, on brokers of their own):
    the baseline checkout's code and this tree's. Queries alternate between them (A B, then B A),
    so both see the same machine at the same moments."""
    from tests.integration.services import start_api, start_worker

    n, dim, seed, per_image, load_s = common
    trees = {"baseline": baseline, "current": ROOT}
    services, bases, workers = [], {}, {}
    try:
        for db, (name, tree) in enumerate(trees.items(), start=1):
            stack_env = env | {"PYTHONPATH": str(tree), "BROKER_URL": url.rsplit("/", 1)[0] + f"/{db}"}
            api, bases[name] = start_api(url, workdir, access_log=False, **stack_env)
            services.append(api)
            workers[name] = start_worker(url, workdir, name, ready_timeout=600, **stack_env)
            services.append(workers[name])
        clients = {name: httpx.Client(base_url=base, timeout=600) for name, base in bases.items()}
        first = {}
        for name, http in clients.items():
            started = time.perf_counter()
            search(http, "scale", image_id(int(rows[0])))
            first[name] = time.perf_counter() - started
        latencies = {name: [] for name in trees}
        one_request = {name: [] for name in trees}
        answers = {name: [] for name in trees}
        split = {name: [] for name in trees}
        # Each tree, each way of asking (POST then GET ?wait=, and one POST ?wait=), in an order
        # shuffled per query: a fixed or alternating order favoured whichever request followed its
        # own stack's last one (warm) or another's (whose worker may still be finishing up).
        order = [(name, one) for one in (False, True) for name in trees]
        shuffler = random.Random(seed)
        for r in rows:
            for name, one in shuffler.sample(order, len(order)):
                t = time.perf_counter()
                job = search(clients[name], "scale", image_id(int(r)), split=None if one else split[name], one=one)
                (one_request[name] if one else latencies[name]).append((time.perf_counter() - t) * 1000)
                if not one:
                    answers[name].append([m["image_id"] for m in job["result"]["matches"]])
        out = {}
        for name, tree in trees.items():
            stages = worker_stages(workers[name].log, "scale")
            rss = pool_rss_mb(workers[name].proc.pid)
            fig = _figures(
                n,
                dim,
                latencies[name],
                split[name],
                stages,
                rss,
                answers[name],
                first[name],
                rows,
                seed,
                per_image,
                load_s,
            )
            out[name] = fig | _asked_once(one_request[name]) | {"tree": str(tree)}
            print(json.dumps(out[name]), flush=True)
        return out
    finally:
        for service in reversed(services):
            service.stop()


def _asked_once(one_request: list[float]) -> dict:
    return {
        "one_request_p50_ms": round(float(np.percentile(one_request, 50)), 1),
        "one_request_p95_ms": round(float(np.percentile(one_request, 95)), 1),
    }


def _figures(n, dim, latencies, split, stages, rss, answers, first_s, rows, seed, per_image, load_s) -> dict:
    expected = exact_top10(query_vectors(rows, n, dim, seed), rows, n, dim, seed)
    recall = float(np.mean([len(set(a[:10]) & set(e)) / 10 for a, e in zip(answers, expected, strict=True)]))
    ms = np.array(latencies)
    return {
        "vectors": n,
        "dim": dim,
        "search_p50_ms": round(float(np.percentile(ms, 50)), 1),
        "search_p95_ms": round(float(np.percentile(ms, 95)), 1),
        "post_p50_ms": round(float(np.percentile([p for p, _ in split], 50)), 2),
        "wait_p50_ms": round(float(np.percentile([w for _, w in split], 50)), 2),
        "worker_stages_p50_ms": stages,
        "recall_at_10": round(recall, 4),
        "worker_rss_mb": round(rss),
        "first_search_s": round(first_s, 1),
        "redis_bytes_per_image": round(per_image),
        "load_s": round(load_s, 1),
    }


if __name__ == "__main__":
    raise SystemExit(main())
