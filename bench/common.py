"""Shared pieces of the benchmark scripts: reading a labelled folder, talking to the service."""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import httpx
from PIL import Image, ImageOps


class MissingData(SystemExit):
    """A benchmark's photo folder is not there: say which, and how to point at one."""


def labelled_images(root: Path) -> list[tuple[Path, str]]:
    """`labels.csv` (path,label) if present, else every `label/image` file below root."""
    if not Path(root).is_dir():
        raise MissingData(
            f"benchmark data folder {root} not found. The benchmarks read labelled photos: pass "
            "--data DIR with a labels.csv (path,label) or one sub-folder per label (cats/, dogs/, ...). "
            "A fresh clone has none; the project's set lives outside it (../shared/datasets/animals)."
        )
    labels = root / "labels.csv"
    if labels.is_file():
        with labels.open() as fh:
            return [(root / row["path"], row["label"]) for row in csv.DictReader(fh)]
    exts = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
    return sorted((p, p.parent.name) for p in root.glob("*/*") if p.suffix.lower() in exts)


def reencode(data: bytes, scale: float, quality: int, flip: bool = False) -> bytes:
    img = Image.open(io.BytesIO(data))
    img = ImageOps.exif_transpose(img).convert("RGB")
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    if flip:
        img = ImageOps.mirror(img)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


class Service:
    def __init__(self, url: str, timeout: float = 600) -> None:
        self.http = httpx.Client(base_url=url, timeout=timeout)

    def wait(self, job_id: str, timeout: float = 3600) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.http.get(f"/v1/jobs/{job_id}", params={"wait": 30}).raise_for_status().json()
            if job["status"] in ("succeeded", "partial", "failed"):
                return job
        raise TimeoutError(job_id)

    def index(self, collection: str, files: list[tuple[str, bytes]]) -> dict[str, Any]:
        parts = [("files", (name, data, "application/octet-stream")) for name, data in files]
        resp = self.http.post(f"/v1/collections/{collection}/images", files=parts).raise_for_status()
        return self.wait(resp.json()["job_id"])

    def search(self, collection: str, data: bytes, k: int) -> dict[str, Any]:
        resp = self.http.post(
            f"/v1/collections/{collection}/search", params={"k": k}, files={"file": ("q.jpg", data, "image/jpeg")}
        ).raise_for_status()
        return self.wait(resp.json()["job_id"])
