"""Embedding throughput, measured in one run on the same images, each path in its own process:

  (a) the notebook's way: one `model.predict` per image at 512x512
  (b) Keras float32, batches of 32 (`model.predict`), at the worker's input size
  (c) the worker's chosen inference backend (INFERENCE_BACKEND=auto), batches of 32
  (d) end to end through the service: HTTP upload of all images to the index job `succeeded`,
      one worker, on a redis-server started for the run

(a)-(c) include decoding and resizing the JPEG bytes (the worker's own functions); the forward
pass alone is printed too.

    python bench/throughput.py --data ../shared/datasets/animals --images 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images  # noqa: E402

WEIGHTS = {
    "resnet50": "random",
    "efficientnet-lite0": "imagenet",
    "efficientnet-lite1": "imagenet",
    "efficientnet-lite2": "imagenet",
}


def load_blobs(data: Path, count: int) -> list[bytes]:
    items = labelled_images(data)
    step = max(1, len(items) // count)
    return [p.read_bytes() for p, _ in items[::step][:count]]


def _decode(blobs: list[bytes], side: int) -> np.ndarray:
    from shared.imaging import decode_image, to_model_input

    return np.stack([to_model_input(decode_image(b).image, side) for b in blobs])


def measure(kind: str, model: str, weights: str, blobs: list[bytes], threads: int, cache_dir: Path) -> dict:
    from shared.models.registry import get_model_spec
    from worker.runtime import _configure_tensorflow

    _configure_tensorflow(threads)
    spec = get_model_spec(model)
    side = 512 if kind == "notebook" else spec.default_input_size
    network = spec.build(weights, side, cache_dir)
    if kind == "chosen":
        from worker.model.inference import build_embedder

        embedder = build_embedder(network, "auto", "auto", cache_dir, threads)
        backend = f"{embedder.runner.backend}/{embedder.runner.precision}"

        def forward(x: np.ndarray) -> np.ndarray:
            return embedder.embed(x)
    else:
        backend = "keras/f32"
        batch = 1 if kind == "notebook" else 32

        def forward(x: np.ndarray) -> np.ndarray:
            return network.model.predict(network.preprocess(x), batch_size=batch, verbose=0)

    step = 1 if kind == "notebook" else 32
    forward(_decode(blobs[:step], side))  # warm-up: graph building is not throughput
    forward_s = forward_cpu = 0.0
    started = time.perf_counter()
    for i in range(0, len(blobs), step):
        x = _decode(blobs[i : i + step], side)
        t, c = time.perf_counter(), cpu_seconds()
        forward(x)
        forward_s += time.perf_counter() - t
        forward_cpu += cpu_seconds() - c
    total = time.perf_counter() - started
    return {
        "images_s": len(blobs) / total,
        "forward_images_s": len(blobs) / forward_s,
        # CPU time of all the process's threads per image of the forward pass, and the cores it kept busy.
        "forward_cpu_ms": 1000 * forward_cpu / len(blobs),
        "forward_cores": forward_cpu / forward_s,
        "backend": backend,
        "side": side,
    }


def cpu_seconds() -> float:
    """User + system CPU time of every thread of this process so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def end_to_end(model: str, weights: str, blobs: list[bytes], cache_dir: Path) -> dict:
    from tests.integration.services import start_api, start_redis, start_worker

    workdir = Path(tempfile.mkdtemp(prefix="throughput-"))
    redis_service, url = start_redis(workdir)
    extra = {"EMBEDDING_MODEL": model, "SIMSEARCH_CACHE_DIR": str(cache_dir), "EMBEDDING_WEIGHTS": weights}
    worker = start_worker(url, workdir, "bench", ready_timeout=600, **extra)
    api, base = start_api(url, workdir, EMBEDDING_MODEL=model)
    try:
        service = Service(base)
        service.index("warmup", [(f"w{i}.jpg", b) for i, b in enumerate(blobs[-32:])])
        files = [(f"img{i:04d}.jpg", b) for i, b in enumerate(blobs)]
        started = time.perf_counter()
        job = service.index("bench", files)
        took = time.perf_counter() - started
        assert job["status"] == "succeeded", job["errors"][:3]
        return {"images_s": len(blobs) / took, "seconds": took}
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()


def run_child(kind: str, model: str, args: argparse.Namespace) -> dict:
    cmd = [sys.executable, __file__, "--child", kind, "--model", model, "--data", str(args.data)]
    cmd += ["--images", str(args.notebook_images if kind == "notebook" else args.images)]
    cmd += ["--threads", str(args.threads), "--cache-dir", str(args.cache_dir)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONWARNINGS="ignore")
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or not lines:
        raise RuntimeError(f"{kind}/{model} failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1])


def machine() -> str:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if "model name" in line), "?")
    isa = [f for f in ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8") if f" {f}" in flags]
    return f"{model}, {os.cpu_count()} cores, {platform.python_version()}, ISA: {' '.join(isa) or 'none listed'}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--notebook-images", type=int, default=32, help="(a) is slow: fewer images")
    parser.add_argument("--models", default="resnet50,efficientnet-lite0")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "simsearch-bench-cache")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        blobs = load_blobs(args.data, args.images)
        weights = WEIGHTS[args.model]
        if args.child == "service":
            print(json.dumps(end_to_end(args.model, weights, blobs, args.cache_dir)))
        else:
            print(json.dumps(measure(args.child, args.model, weights, blobs, args.threads, args.cache_dir)))
        return 0

    print(f"machine: {machine()}")
    print(f"images: {args.images} from {args.data} ((a) on the first {args.notebook_images})\n")
    for model in args.models.split(","):
        r = {kind: run_child(kind, model, args) for kind in ("notebook", "keras", "chosen", "service")}
        print(f"{model} (weights: {WEIGHTS[model]})")
        print(f"  (a) notebook, per-image predict @512   {r['notebook']['images_s']:7.1f} images/s")
        for key, label in (("keras", "(b) Keras float32, batch 32"), ("chosen", "(c) worker backend, batch 32")):
            m = r[key]
            print(
                f"  {label:37s}{m['images_s']:7.1f} images/s  (forward only {m['forward_images_s']:6.1f}; "
                f"{m['backend']} @{m['side']})"
            )
        print(
            f"  (d) end to end through the service     {r['service']['images_s']:7.1f} images/s  "
            f"({args.images} images in {r['service']['seconds']:.1f}s, 1 worker)"
        )
        print(
            f"  (c)/(b) = {r['chosen']['images_s'] / r['keras']['images_s']:.2f}   "
            f"(d)/(c) = {r['service']['images_s'] / r['chosen']['images_s']:.2f}   "
            f"(c)/(a) = {r['chosen']['images_s'] / r['notebook']['images_s']:.1f}\n",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
