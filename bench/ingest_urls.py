"""URL ingest against multipart upload of the same images, in one run (issue 13).

    python bench/ingest_urls.py --data ../shared/datasets/animals --images 1000

One worker (EfficientNet-Lite0, the fast path chosen at start), a fresh redis-server, the API,
and a loopback HTTP server holding the images. Indexes the images three ways into fresh
collections, each from submission to the job `succeeded`: (1) multipart upload in requests of 64
files (as the CLI does, all requests first), (2) one URL import (`POST /imports`, JSON list of
1,000), (3) a zip of the images (`POST /images`, expanded by the worker). Prints images/s of each
and the ratios; the last line is JSON. The worker fetches with FETCH_ALLOW_PRIVATE=true (loopback).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import io
import json
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
from common import Service, labelled_images  # noqa: E402

MODEL = "efficientnet-lite0"


def serve(folder: Path) -> tuple[http.server.ThreadingHTTPServer, str]:
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


def timed(service: Service, submit) -> float:
    started = time.perf_counter()
    job_ids = submit()
    jobs = [service.wait(j) for j in job_ids]
    took = time.perf_counter() - started
    assert all(j["status"] == "succeeded" for j in jobs), [j["errors"][:3] for j in jobs]
    return took


def run(data: Path, count: int, cache_dir: Path) -> dict:
    from tests.integration.services import small_stack

    items = labelled_images(data)
    step = max(1, len(items) // count)
    blobs = [p.read_bytes() for p, _ in items[::step][:count]]
    workdir = Path(tempfile.mkdtemp(prefix="ingest-urls-"))
    site = workdir / "site"
    site.mkdir()
    for i, b in enumerate(blobs):
        (site / f"img{i:04d}.jpg").write_bytes(b)
    server, base_url = serve(site)
    env = {"EMBEDDING_MODEL": MODEL, "SIMSEARCH_CACHE_DIR": str(cache_dir), "EMBEDDING_WEIGHTS": "imagenet"}
    out: dict = {"images": len(blobs)}
    with small_stack(workdir, "bench", ready_timeout=600, FETCH_ALLOW_PRIVATE="true", **env) as base:
        service = Service(base)
        service.index("warmup", [(f"w{i}.jpg", b) for i, b in enumerate(blobs[-32:])])

        def multipart() -> list[str]:
            files = [(f"img{i:04d}.jpg", b) for i, b in enumerate(blobs)]
            ids = []
            for start in range(0, len(files), 64):
                parts = [("files", (n, d, "image/jpeg")) for n, d in files[start : start + 64]]
                ids.append(service.http.post("/v1/collections/multipart/images", files=parts).json()["job_id"])
            return ids

        def urls() -> list[str]:
            body = {"urls": [f"{base_url}/img{i:04d}.jpg" for i in range(len(blobs))]}
            return [service.http.post("/v1/collections/urls/imports", json=body).raise_for_status().json()["job_id"]]

        def archive() -> list[str]:
            buf = io.BytesIO()
            with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
                for i, b in enumerate(blobs):
                    zf.writestr(f"img{i:04d}.jpg", b)
            files = [("files", ("all.zip", buf.getvalue(), "application/zip"))]
            return [service.http.post("/v1/collections/zip/images", files=files).raise_for_status().json()["job_id"]]

        for name, submit in (("multipart", multipart), ("urls", urls), ("zip", archive)):
            took = timed(service, submit)
            out[name] = {"seconds": round(took, 1), "images_s": round(len(blobs) / took, 1)}
            print(f"{name}: {out[name]}", flush=True)
        out["urls_vs_multipart"] = round(out["urls"]["images_s"] / out["multipart"]["images_s"], 3)
        out["zip_vs_multipart"] = round(out["zip"]["images_s"] / out["multipart"]["images_s"], 3)
    server.shutdown()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "animals")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--cache-dir", type=Path, default=Path.home() / ".cache" / "simsearch")
    args = parser.parse_args()
    print(json.dumps(run(args.data, args.images, args.cache_dir)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
