"""Synthetic test photographs: deterministic, varied, and cheap to make."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def make_photo(seed: int, size: tuple[int, int] = (320, 240)) -> Image.Image:
    """A gradient background with random shapes and texture, different for every seed."""
    rng = np.random.default_rng(seed)
    w, h = size
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0.0, 1.0, w)[None, :, None] * rng.uniform(0.3, 1) + np.linspace(0, 1, h)[
        :, None, None
    ] * rng.uniform(0, 0.7)
    base = (c0 * (1 - np.clip(t, 0, 1)) + c1 * np.clip(t, 0, 1)).astype(np.uint8)
    img = Image.fromarray(base, "RGB")
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(10, w // 2)), y0 + int(rng.integers(10, h // 2))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.rectangle([x0, y0, x1, y1], fill=colour, outline=(0, 0, 0), width=int(rng.integers(1, 6)))
    noise = rng.normal(0, 8, (h, w, 3))
    return Image.fromarray(np.clip(np.asarray(img, dtype=np.float64) + noise, 0, 255).astype(np.uint8), "RGB")


def encode(img: Image.Image, fmt: str = "JPEG", **options: object) -> bytes:
    out = io.BytesIO()
    img.save(out, format=fmt, **options)
    return out.getvalue()


def photo_bytes(seed: int, fmt: str = "JPEG", size: tuple[int, int] = (320, 240)) -> bytes:
    return encode(make_photo(seed, size), fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def reencode(data: bytes, scale: float = 0.8, quality: int = 70) -> bytes:
    """What a user's copy of a photo looks like: resized and recompressed."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.Resampling.BICUBIC)
    return encode(img, "JPEG", quality=quality)
