"""A small request of large images must not blow up a worker: 12 PNGs of 7000x7000 (about 2 MB
on the wire) took a worker process to 3.9 GB when each decoded image was held for the whole
chunk. Each image is now reduced to what is kept right after decoding."""

from __future__ import annotations

import io
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

from tests.integration.client_helpers import submit_images, wait_job
from tests.integration.services import start_api, start_redis, start_worker

SIDE = 7000
LIMIT_MB = 700  # one full-size RGBA decode is ~200 MB; twelve held at once were ~2,400 MB


def big_png(seed: int) -> bytes:
    img = Image.new("RGB", (SIDE, SIDE), (20 * seed % 256, 90, 160))
    ImageDraw.Draw(img).rectangle([seed * 300, 500, seed * 300 + 2500, 4000], fill=(240, 200, 10 * seed))
    out = io.BytesIO()
    img.save(out, format="PNG", compress_level=9)
    return out.getvalue()


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def test_large_images_keep_the_worker_small(tmp_path: Path) -> None:
    # A stack of its own: the one measured worker must be the one that takes the chunk.
    redis_service, redis_url = start_redis(tmp_path)
    worker = start_worker(redis_url, tmp_path, "memory", WORKER_CONCURRENCY="1")
    api, api_url = start_api(redis_url, tmp_path)
    try:
        (child,) = _children(worker.proc.pid)
        Path(f"/proc/{child}/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
        before = _status_kb(child, "VmRSS")
        files = [(f"big{i}.png", big_png(i)) for i in range(12)]
        assert sum(len(d) for _, d in files) < 4_000_000
        with httpx.Client(base_url=api_url, timeout=60) as client:
            job = wait_job(client, submit_images(client, "big", files)["job_id"], timeout=300)
        assert job["status"] == "succeeded", job["errors"]
        peak = _status_kb(child, "VmHWM")
        grew_mb = (peak - before) / 1024
        print(f"worker process: RSS {before / 1024:.0f} MB before, peak {peak / 1024:.0f} MB (+{grew_mb:.0f} MB)")
        assert grew_mb < LIMIT_MB
    finally:
        api.stop()
        worker.stop()
        redis_service.stop()
