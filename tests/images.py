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


def unrelated_images(count_each: int = 4, size: int = 256, seed: int = 0) -> list[tuple[str, bytes]]:
    """Images unlike any photo: noise, plain colours, gradients, rendered text and line drawings,
    as (kind, PNG bytes). What a calibrated search must answer "no similar images" to."""
    from PIL import ImageFont

    rng = np.random.default_rng(seed)
    out: list[tuple[str, Image.Image]] = []

    def colour() -> tuple[int, int, int]:
        r, g, b = (int(v) for v in rng.integers(0, 256, 3))
        return r, g, b

    for i in range(count_each):
        if i % 2:
            pixels = np.clip(rng.normal(128, 50, (size, size, 3)), 0, 255).astype(np.uint8)
        else:
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        out.append(("noise", Image.fromarray(pixels, "RGB")))
        out.append(("colour", Image.new("RGB", (size, size), colour())))
        ramp = np.linspace(0, 1, size)[None, :, None]
        out.append(
            (
                "gradient",
                Image.fromarray(
                    (np.array(colour()) * (1 - ramp) + np.array(colour()) * ramp).repeat(size, 0).astype(np.uint8)
                ),
            )
        )
        text = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(text)
        font = ImageFont.load_default(size=int(rng.integers(18, 40)))
        for line in range(int(rng.integers(2, 6))):
            draw.text(
                (8, 12 + 44 * line),
                ["Invoice 2231", "Hello world", "Total: $42.00", "Chapter 7"][(i + line) % 4],
                fill=(0, 0, 0),
                font=font,
            )
        out.append(("text", text))
        drawing = Image.new("RGB", (size, size), (255, 255, 255))
        draw = ImageDraw.Draw(drawing)
        for _ in range(int(rng.integers(3, 10))):
            x0, x1 = sorted(int(v) for v in rng.integers(0, size, 2))
            y0, y1 = sorted(int(v) for v in rng.integers(0, size, 2))
            if rng.random() < 0.5:
                draw.ellipse([x0, y0, x1, y1], outline=colour(), width=3)
            else:
                draw.line([(x0, y0), (x1, y1), (x0, y1)], fill=colour(), width=4)
        out.append(("drawing", drawing))
    return [(kind, encode(img, "PNG")) for kind, img in out]
