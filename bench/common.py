"""Shared pieces of the benchmark scripts: reading a labelled folder, talking to the service."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Callable
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


# -- edits a near-duplicate search must see through ------------------------------------------------
def _rgb(data: bytes) -> Image.Image:
    return ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")


def _jpeg(img: Image.Image, quality: int = 90) -> bytes:
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _centre_crop(img: Image.Image, side: float) -> Image.Image:
    w, h = round(img.width * side), round(img.height * side)
    left, top = (img.width - w) // 2, (img.height - h) // 2
    return img.crop((left, top, left + w, top + h))


def _caption(img: Image.Image) -> Image.Image:
    from PIL import ImageDraw, ImageFont

    img = img.copy()
    draw = ImageDraw.Draw(img)
    size = max(12, img.height // 8)
    font = ImageFont.load_default(size=size)
    draw.rectangle((0, img.height - int(size * 1.6), img.width, img.height), fill=(0, 0, 0))
    draw.text((size // 2, img.height - int(size * 1.4)), "SALE -50% simsearch.example", fill=(255, 255, 0), font=font)
    return img


# Each edit: original bytes -> edited JPEG bytes. Crops keep the centre (the subject, in most photos).
EDITS: dict[str, Callable[[bytes], bytes]] = {
    "crop 70 %": lambda d: _jpeg(_centre_crop(_rgb(d), 0.7)),
    "crop 50 %": lambda d: _jpeg(_centre_crop(_rgb(d), 0.5)),
    "rotate 10°": lambda d: _jpeg(_rgb(d).rotate(10, resample=Image.Resampling.BICUBIC)),
    "grayscale": lambda d: _jpeg(ImageOps.grayscale(_rgb(d)).convert("RGB")),
    "JPEG q15, 50 %": lambda d: reencode(d, 0.5, 15),
    "text overlay": lambda d: _jpeg(_caption(_rgb(d))),
    "mirror": lambda d: _jpeg(ImageOps.mirror(_rgb(d))),
}
