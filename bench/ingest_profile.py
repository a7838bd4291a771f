"""Where ingest time goes: a per-stage profile of index jobs through the service, against the raw
forward pass measured in the same run.

    python bench/ingest_profile.py --data ../shared/datasets/animals --model resnet50 --images 416 --chunk 52

One run, each path in its own process (bench/throughput.py's children):

  (b) Keras float32, batched `predict` (decoding excluded from its forward figure);
  (c) the worker's inference backend (`INFERENCE_BACKEND=auto`) on batches of `--chunk`: the raw
      fast forward (decoding excluded) and with the worker's decode-and-resize in front of it;
  (d) end to end: a fresh Redis, one worker, the API; the photos uploaded in one request
      (`INDEX_CHUNK_SIZE=--chunk`), the clock stopped when the job has `succeeded`, `--rounds`
      times (the best round is reported). The worker logs each chunk's stages
      (worker/ingest/stages.py); they are summed per stage over the job's chunks.

Prints the stage table (seconds, ms per image, ms per chunk, share of the job's wall time), what
the chunks do not account for (the API's upload handling, queueing, the hop between chunks), and
the ratios (d)/(c) and (d)/(b). It also counts the CPU time of every process of (d) (worker pool,
API, Redis) and of (c)'s forward pass: the forward alone keeps nearly every core busy, so the job's
CPU work spread over all cores is a ceiling no overlapping can pass; (d) is printed against it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import defaultdict
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
import throughput  # noqa: E402

CORES = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
from common import Service  # noqa: E402


def chunk_stages(log: Path, collection: str) -> list[dict]:
    chunks = []
    for line in log.read_text().splitlines():
        if not line.startswith("{"):
            continue
        entry = json.loads(line)
        if entry.get("message") == "indexed a chunk" and entry.get("collection") == collection:
            chunks.append(entry)
    return chunks


def tree_cpu(pid: int) -> float:
    """User + system CPU seconds so far of a process and its live descendants (a worker's pool)."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def end_to_end(args: argparse.Namespace, blobs: list[bytes], extra: dict[str, str]) -> dict:
    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="ingest-profile-"))
    env = {"EMBEDDING_MODEL": args.model, "EMBEDDING_WEIGHTS": throughput.WEIGHTS.get(args.model, "imagenet")}
    env |= {"SIMSEARCH_CACHE_DIR": str(args.cache_dir), "INDEX_CHUNK_SIZE": str(args.chunk)}
    env |= {"BLOB_FSYNC": "true" if args.fsync else "false", "RATE_LIMIT_PER_SECOND": "0"}
    if args.threads is not None:  # as (b) and (c) run the forward; else the worker's own default
        env["INFERENCE_THREADS"] = str(args.threads)
    env |= extra
    redis_service, url = start_redis(workdir)
    worker = start_worker(url, workdir, "bench", ready_timeout=900, **env)
    api, base = start_api(url, workdir, access_log=False, **env)
    try:
        service = Service(base)
        service.index("warmup", [(f"w{i}.jpg", b) for i, b in enumerate(blobs[: args.chunk])])
        rounds = []
        for r in range(args.rounds):
            collection = f"profile{r}"
            files = [(f"img{i:04d}.jpg", b) for i, b in enumerate(blobs)]
            parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
            processes = {"worker": worker, "api": api, "redis": redis_service}
            cpu_before = {name: tree_cpu(svc.proc.pid) for name, svc in processes.items()}
            started, wall_start = time.perf_counter(), time.time()
            accepted = service.http.post(f"/v1/collections/{collection}/images", files=parts).raise_for_status()
            posted = time.time()
            job = service.wait(accepted.json()["job_id"])
            took = time.perf_counter() - started
            done = time.time()
            cpu = {name: tree_cpu(svc.proc.pid) - cpu_before[name] for name, svc in processes.items()}
            assert job["status"] == "succeeded", job.get("errors", [])[:3]
            time.sleep(0.5)  # the last chunk's log line
            chunks = chunk_stages(worker.log, collection)
            stages: dict[str, float] = defaultdict(float)
            for chunk in chunks:
                for name, seconds in chunk["stages"].items():
                    stages[name] += seconds
            rounds.append(
                {
                    "seconds": took,
                    "chunks": len(chunks),
                    "chunk_seconds": sum(c["seconds"] for c in chunks),
                    "cpu_s": cpu,
                }
            )
            ends = [datetime.fromisoformat(c["ts"]).timestamp() for c in chunks]
            first_start = min(end - c["seconds"] for end, c in zip(ends, chunks, strict=True))
            # Where the time outside the chunks went: the upload request, the wait for the first
            # chunk, the gaps between chunks, and the end (last chunk logged -> client has the job).
            rounds[-1]["timeline"] = {
                "upload_request": posted - wall_start,
                "to_first_chunk": first_start - posted,
                "between_chunks": (max(ends) - first_start) - sum(c["seconds"] for c in chunks),
                "after_last_chunk": done - max(ends),
            }
            rounds[-1]["stages"] = dict(stages)
        best = min(rounds, key=lambda r: r["seconds"])
        return best | {"images_s": len(blobs) / best["seconds"], "all_rounds_s": [r["seconds"] for r in rounds]}
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()


def print_profile(name: str, extra: dict[str, str], e2e: dict, n: int) -> None:
    wall = e2e["seconds"]
    print(
        f"\n(d) {name} {extra or ''}: {e2e['images_s']:.1f} images/s ({n} in {wall:.2f} s; "
        f"rounds {e2e['all_rounds_s']})"
    )
    print(f"{'stage':18s} {'seconds':>8s} {'ms/image':>9s} {'ms/chunk':>9s} {'share':>6s}")
    rows = sorted(e2e["stages"].items(), key=lambda kv: -kv[1])
    accounted = sum(seconds for _, seconds in rows)
    rows += [("(chunk, untimed)", e2e["chunk_seconds"] - accounted), ("(outside chunks)", wall - e2e["chunk_seconds"])]
    for stage, seconds in rows:
        print(
            f"{stage:18s} {seconds:8.3f} {1000 * seconds / n:9.2f} {1000 * seconds / max(1, e2e['chunks']):9.1f} "
            f"{seconds / wall:6.1%}"
        )
    print("  outside the chunks: " + ", ".join(f"{k} {v:.3f} s" for k, v in e2e["timeline"].items()))
    cpu = e2e["cpu_s"]
    print(
        "  CPU per image: "
        + ", ".join(f"{name} {1000 * seconds / n:.2f} ms" for name, seconds in cpu.items())
        + f"; {sum(cpu.values()) / wall:.2f} of {CORES} cores busy on average"
    )


def ceiling(e2e: dict, n: int) -> float:
    """Images/s if every core were busy for the whole job doing the CPU work this job did."""
    return CORES * n / sum(e2e["cpu_s"].values())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--images", type=int, default=416)
    parser.add_argument("--chunk", type=int, default=52)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-fsync", dest="fsync", action="store_false", help="BLOB_FSYNC=false (default: true)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="the forward's threads in (b), (c) and (d) (default: every core; (d) as the worker picks); "
        "fewer than the cores leaves the rest to everything else",
    )
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "simsearch-bench-cache")
    parser.add_argument("--skip-keras", action="store_true")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME:KEY=VALUE,KEY=VALUE: also measure (d) with these worker/API settings, in the same run",
    )
    args = parser.parse_args()
    args.notebook_images = 1
    child_threads = args.threads or CORES
    blobs = throughput.load_blobs(args.data, args.images)
    print(f"machine: {throughput.machine()}")
    print(f"{len(blobs)} photos, model {args.model}, chunks of {args.chunk}, BLOB_FSYNC={args.fsync}\n", flush=True)

    child = argparse.Namespace(**(vars(args) | {"threads": child_threads}))
    keras = None if args.skip_keras else throughput.run_child("keras", args.model, child)
    fast = throughput.run_child("chosen", args.model, child)
    variants = {"default": {}}
    for text in args.variant:
        name, _, pairs = text.partition(":")
        variants[name] = dict(pair.split("=", 1) for pair in pairs.split(",") if pair)
    results = {name: end_to_end(args, blobs, extra) for name, extra in variants.items()}
    for name, e2e in results.items():
        print_profile(name, variants[name], e2e, len(blobs))
    e2e = results["default"]
    raw, with_decode = fast["forward_images_s"], fast["images_s"]
    print(
        f"\n(c) raw fast forward ({fast['backend']} @{fast['side']}): {raw:.1f} images/s; "
        f"with decode: {with_decode:.1f}"
    )
    print(f"(d)/(c raw) = {e2e['images_s'] / raw:.2f}   (d)/(c with decode) = {e2e['images_s'] / with_decode:.2f}")
    # The forward alone keeps ~all cores busy, so everything else the job does (decoding, storing, the
    # upload request) takes CPU from it: no overlap can beat the job's CPU work spread over every core.
    bound = ceiling(e2e, len(blobs))
    print(
        f"the raw forward used {fast['forward_cpu_ms']:.2f} ms of CPU per image ({fast['forward_cores']:.2f} cores); "
        f"the job {1000 * sum(e2e['cpu_s'].values()) / len(blobs):.2f} ms in all its processes"
    )
    print(
        f"ceiling with every core busy all the time: {bound:.1f} images/s = {bound / raw:.2f} of (c raw); "
        f"(d) reached {e2e['images_s'] / bound:.2f} of it"
    )
    if keras:
        print(
            f"(b) Keras float32 forward: {keras['forward_images_s']:.1f} images/s (with decode {keras['images_s']:.1f})"
        )
        print(
            f"(d)/(b) = {e2e['images_s'] / keras['forward_images_s']:.2f} (against Keras with decode: "
            f"{e2e['images_s'] / keras['images_s']:.2f})"
        )
    for name, other in results.items():
        if name != "default":
            print(
                f"variant {name}: {other['images_s']:.1f} images/s, (d)/(c raw) = {other['images_s'] / raw:.2f}, "
                f"ceiling {ceiling(other, len(blobs)):.1f} images/s"
            )
    print(json.dumps({"e2e": results, "fast": fast, "keras": keras}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
