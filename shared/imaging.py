"""Image decoding and validation: the only place that turns untrusted bytes into pixels."""

from __future__ import annotations

import hashlib
import io
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shared.errors import InvalidImage

# Only these decoders ever see client bytes: Pillow's other plugins (PDF, EPS, FITS, SVG via
# plugins, ...) widen the attack surface for no user benefit.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
THUMBNAIL_SIDE = 512
DEFAULT_MAX_PIXELS = 50_000_000
_ORIENTATION = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright as a person sees it (EXIF orientation applied)
    format: str
    width: int  # of the original, after orientation
    height: int
    source_mode: str = "RGB"  # the file's own colour mode
    oriented: bool = False  # EXIF said to rotate or flip it


def content_id(data: bytes) -> str:
    """Image ids come from the bytes, so re-submitting the same file is idempotent."""
    return hashlib.sha256(data).hexdigest()[:32]


def safe_filename(name: str | None) -> str:
    """A display name only: never used as a path. Strips directories and control characters."""
    if not name:
        return "upload"
    base = PureWindowsPath(PurePosixPath(name).name).name
    cleaned = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return cleaned[:255] or "upload"


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("empty file")
    try:
        with warnings.catch_warnings():
            # Pillow's decompression-bomb guard stays on; its warning tier is treated as an error too.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
    except UnidentifiedImageError as exc:
        raise InvalidImage("not an image in an allowed format (JPEG, PNG, WebP, BMP, GIF)") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise InvalidImage(f"image has too many pixels: {exc}") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise InvalidImage(f"unreadable image header: {exc}") from exc
    if img.width * img.height > max_pixels:
        raise InvalidImage(f"image is {img.width}x{img.height}, over the limit of {max_pixels:,} pixels")
    return img


def sniff_format(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Cheap check (header only, no pixel decoding) used by the API before queueing a query."""
    return _open(data, max_pixels).format or "unknown"


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit greyscale: scale into 8 bits instead of letting convert() clip to white.
        arr = np.asarray(img, dtype=np.float64)
        top = arr.max() if arr.size and arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr * (255.0 / top), 0, 255).astype(np.uint8), mode="L")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int = THUMBNAIL_SIDE
) -> DecodedImage:
    """Decode untrusted bytes to an upright RGB image, or raise `InvalidImage` with a reason.

    For JPEG, `draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale while staying at least
    `draft_side` pixels on each side: most of the decode cost of a large photo disappears.
    """
    img = _open(data, max_pixels)
    fmt = img.format or "unknown"
    width, height = img.size
    source_mode = img.mode
    try:
        orientation = img.getexif().get(_ORIENTATION, 1)
        if orientation in (5, 6, 7, 8):  # displayed rotated by 90 degrees
            width, height = height, width
        if fmt == "GIF":
            img.seek(0)
        if fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
            img.draft("RGB" if img.mode != "CMYK" else "CMYK", (draft_side, draft_side))
        img = ImageOps.exif_transpose(img)
        img.load()
        rgb = _to_rgb(img)
    except InvalidImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"corrupt or truncated image data: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"image has too many pixels: {exc}") from exc
    return DecodedImage(
        image=rgb, format=fmt, width=width, height=height, source_mode=source_mode, oriented=orientation != 1
    )


def to_model_input(img: Image.Image, side: int) -> np.ndarray:
    """Squash to side x side like Keras' `load_img(target_size=...)`, with a better filter.

    `reducing_gap` shrinks by an integer factor first (cheap box filter), then resamples.
    """
    resized = img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8)


def make_thumbnail(img: Image.Image, max_side: int = THUMBNAIL_SIDE, quality: int = 85) -> bytes:
    thumb = img.copy()
    thumb.thumbnail((max_side, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality, optimize=True)
    return out.getvalue()


def rendition(data: bytes, decoded: DecodedImage, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """What `…/content` serves. A small, upright RGB JPEG is kept as uploaded: re-encoding it would
    only cost time and quality. Anything else becomes a JPEG of at most `max_side` pixels."""
    small = max(decoded.width, decoded.height) <= max_side
    if decoded.format == "JPEG" and small and decoded.source_mode == "RGB" and not decoded.oriented:
        return data
    return make_thumbnail(decoded.image, max_side)
