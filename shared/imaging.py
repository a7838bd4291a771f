"""Image decoding and validation: the only place that turns untrusted bytes into pixels."""

from __future__ import annotations

import hashlib
import io
import re
import unicodedata
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import PurePosixPath, PureWindowsPath

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from shared.errors import InvalidImage

# Only these decoders ever see client bytes: Pillow's other plugins (PDF, EPS, FITS, SVG via
# plugins, ...) widen the attack surface for no user benefit.
ALLOWED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
THUMBNAIL_SIDE = 512
DEFAULT_MAX_PIXELS = 50_000_000
_ORIENTATION = 0x0112
# What each EXIF orientation needs to be shown upright (the table `ImageOps.exif_transpose` uses). Applied
# to the small results rather than the decode, which saves a full-size copy.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_WIDE_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
_BAND_PIXELS = 1 << 18  # pixels converted at a time: each temporary ~1 MB (and faster than larger bands)


@dataclass(frozen=True)
class DecodedImage:
    image: Image.Image  # RGB, upright as a person sees it (EXIF orientation applied)
    format: str
    width: int  # of the original, after orientation
    height: int
    source_mode: str = "RGB"  # the file's own colour mode
    oriented: bool = False  # EXIF said to rotate or flip it


@dataclass(frozen=True)
class PreparedImage:
    """All that indexing keeps of an upload: small, whatever the size of the original."""

    pixels: np.ndarray  # (side, side, 3) uint8 model input, squashed as `to_model_input` does
    rendition: bytes  # what `…/content` serves: JPEG, long side <= THUMBNAIL_SIDE, no metadata
    format: str  # of the original file
    width: int  # of the original, after EXIF orientation
    height: int


def content_id(data: bytes) -> str:
    """Image ids come from the bytes, so re-submitting the same file is idempotent."""
    return hashlib.sha256(data).hexdigest()[:32]


def archive_kind(head: bytes) -> str | None:
    """What the first 512 bytes say the file is: 'zip', 'tar' (plain or compressed) or None."""
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")) or head[257:262] == b"ustar":
        return "tar"
    return None


def safe_filename(name: str | None) -> str:
    """A display name only: never used as a path. Strips directories and control characters."""
    if not name:
        return "upload"
    base = PureWindowsPath(PurePosixPath(name).name).name
    cleaned = "".join(ch for ch in base if unicodedata.category(ch)[0] != "C").strip()
    return cleaned[:255] or "upload"


# A progressive JPEG is decoded scan by scan over the whole image: a few hundred KB repeating a scan
# thousands of times ("scan bomb") would hold a worker for minutes. Real files have ~10 scans. In
# entropy-coded data 0xFF is always followed by 0x00 or a restart marker, so counting FF DA counts
# start-of-scan markers.
MAX_JPEG_SCANS = 100
# Compressed PNG text chunks may inflate to this much in all (Pillow's default, 64 MiB, let a 63 KB
# file cost ~0.4 s and 60 MB). One chunk (an ICC profile too) keeps Pillow's 1 MiB cap.
PngImagePlugin.MAX_TEXT_MEMORY = 4 * 1024 * 1024
# A colour profile is kept on renditions; a bigger one is dropped (a 2 KB PNG can carry a profile
# that inflates to 1 MiB, which would then be stored and served for every such image).
MAX_ICC_BYTES = 64 * 1024


def _open(data: bytes, max_pixels: int) -> Image.Image:
    if not data:
        raise InvalidImage("empty file")
    if data[:2] == b"\xff\xd8" and (scans := data.count(b"\xff\xda")) > MAX_JPEG_SCANS:
        raise InvalidImage(f"JPEG has {scans} scans, over the limit of {MAX_JPEG_SCANS}")
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


def _to_rgb(img: Image.Image, factor: tuple[int, int] = (1, 1)) -> Image.Image:
    """RGB (transparency flattened onto white) shrunk by `factor` with a box filter, the way `reduce` does.

    Converted a band of rows at a time: for a huge image the temporaries of conversion and compositing
    are one band each, not copies of the whole image beside the decoded one.
    """
    if img.mode == "RGB":  # nothing to convert (most photos): one reduce, or one copy
        return img.copy() if factor == (1, 1) else img.reduce(factor)
    fx, fy = factor
    width, height = img.size
    scale = _grey_scale(img)
    rows = max(1, _BAND_PIXELS // (width * fy)) * fy  # a multiple of fy: bands reduce independently
    out = Image.new("RGB", (-(-width // fx), -(-height // fy)))
    for top in range(0, height, rows):
        band = _band_to_rgb(img.crop((0, top, width, min(top + rows, height))), scale)
        out.paste(band if factor == (1, 1) else band.reduce(factor), (0, top // fy))
    return out


def _grey_scale(img: Image.Image) -> float:
    """16/32-bit greyscale is scaled by its maximum into 8 bits, instead of letting convert() clip it to white."""
    if img.mode not in _WIDE_GREY:
        return 1.0
    top = img.getextrema()[1]
    return 255.0 / top if top > 255 else 1.0


def _band_to_rgb(band: Image.Image, scale: float) -> Image.Image:
    if band.mode in _WIDE_GREY:
        grey = np.asarray(band, dtype=np.float32)  # float64 of a whole 7000x7000 image was 392 MB
        grey *= np.float32(scale)
        band = Image.fromarray(np.clip(grey, 0, 255, out=grey).astype(np.uint8))
    if band.mode in ("RGBA", "LA", "PA") or (band.mode == "P" and "transparency" in band.info):
        rgba = band.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, "white"), rgba).convert("RGB")
    return band.convert("RGB")


def _upright(img: Image.Image, orientation: object) -> Image.Image:
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return img if method is None else img.transpose(method)


@contextmanager
def _decoding() -> Iterator[None]:
    """Whatever a decoder raises on untrusted bytes becomes `InvalidImage` with a reason."""
    try:
        yield
    except InvalidImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise InvalidImage(f"corrupt or truncated image data: {exc}") from exc
    except Image.DecompressionBombError as exc:
        raise InvalidImage(f"image has too many pixels: {exc}") from exc


@dataclass(frozen=True)
class _Source:
    image: Image.Image  # decoded (for JPEG maybe at a draft scale), in the file's own mode and orientation
    format: str
    width: int  # of the original, after orientation
    height: int
    mode: str
    orientation: object  # the EXIF value as found: usually 1..8, but it is untrusted


def _load(data: bytes, max_pixels: int, draft_side: int) -> _Source:
    """Decode without converting or rotating: those are done later, on fewer pixels where possible.

    For JPEG, `draft` lets libjpeg decode at 1/2, 1/4 or 1/8 scale while staying at least `draft_side`
    pixels on each side: most of the decode cost of a large photo disappears.
    """
    img = _open(data, max_pixels)
    fmt = img.format or "unknown"
    width, height = img.size
    mode = img.mode
    orientation = img.getexif().get(_ORIENTATION, 1)
    if orientation in (5, 6, 7, 8):  # displayed rotated by 90 degrees
        width, height = height, width
    if fmt == "GIF":
        img.seek(0)
    if fmt == "JPEG" and img.mode in ("RGB", "L", "CMYK", "YCbCr"):
        img.draft("RGB" if img.mode != "CMYK" else "CMYK", (draft_side, draft_side))
    img.load()
    return _Source(img, fmt, width, height, mode, orientation)


def decode_image(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, draft_side: int = THUMBNAIL_SIDE
) -> DecodedImage:
    """Decode untrusted bytes to an upright RGB image, or raise `InvalidImage` with a reason.

    The result is as large as the decode (JPEGs at a draft scale of at least `draft_side`): code that
    keeps images around should use `prepare_image`.
    """
    with _decoding():
        source = _load(data, max_pixels, draft_side)
        try:
            rgb = _to_rgb(source.image)
        finally:
            source.image.close()  # frees the decoded pixels now, not whenever the object is collected
    rgb.info = dict(source.image.info)  # as convert() would have kept it (make_thumbnail reads the ICC profile)
    return DecodedImage(
        image=_upright(rgb, source.orientation),
        format=source.format,
        width=source.width,
        height=source.height,
        source_mode=source.mode,
        oriented=source.orientation != 1,
    )


def prepare_image(data: bytes, side: int, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> PreparedImage:
    """Decode untrusted bytes into what indexing keeps: the model input and the rendition (or `InvalidImage`).

    Right after decoding, the image is box-reduced to the least both uses need, then the full-size decode
    is freed, so a chunk holds ~200 KB per item instead of a whole decode (147 MB for 7000x7000 RGB).
    Pixels match `to_model_input(decode_image(data).image, side)` to within resampling rounding.
    """
    with _decoding():
        source = _load(data, max_pixels, draft_side=max(THUMBNAIL_SIDE, side))
        size = source.image.size
        factor = _shrink_factor(size, side)
        try:
            small = _to_rgb(source.image, factor)
        finally:
            source.image.close()
    # Where the decoded image lies in `small`: its last row or column may stand for fewer source pixels
    # than the factor, and the resizes must not stretch that edge (Pillow's reducing_gap does the same).
    box = (0.0, 0.0, size[0] / factor[0], size[1] / factor[1])
    pixels = small.resize((side, side), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
    return PreparedImage(
        pixels=np.asarray(_upright(pixels, source.orientation), dtype=np.uint8),
        rendition=_prepared_rendition(data, source, small, size, box),
        format=source.format,
        width=source.width,
        height=source.height,
    )


def _shrink_factor(size: tuple[int, int], side: int) -> tuple[int, int]:
    """Per axis, the largest integer reduction that keeps twice what both uses need: the model input
    (squashed to side x side) and the rendition (fitted into THUMBNAIL_SIDE). Their `reducing_gap=2.0`
    resizes start with this same box reduction, so doing it once, right after decoding, costs nothing."""
    (width, height), (thumb_w, thumb_h) = size, _fit(size, THUMBNAIL_SIDE)
    return (
        max(1, min(width // (2 * side), width // (2 * thumb_w))),
        max(1, min(height // (2 * side), height // (2 * thumb_h))),
    )


def _fit(size: tuple[int, int], longest: int) -> tuple[int, int]:
    """The size `thumbnail((longest, longest))` gives: aspect ratio kept, never enlarged."""
    width, height = size
    if max(width, height) <= longest:
        return size
    if width >= height:
        return longest, max(1, round(height * longest / width))
    return max(1, round(width * longest / height)), longest


def _prepared_rendition(
    data: bytes, source: _Source, small: Image.Image, size: tuple[int, int], box: tuple[float, ...]
) -> bytes:
    """The rendition from `small`, which covers `box` of it for the `size` decoded (not yet upright)."""
    if _serves_upload(source.format, source.width, source.height, source.mode, source.orientation != 1):
        kept = _lossless_rendition(data, source.width, source.height)
        if kept is not None:
            return kept
    raw = small.resize(_fit(size, THUMBNAIL_SIDE), Image.Resampling.LANCZOS, box=box, reducing_gap=2.0)
    return _encode_jpeg(_upright(raw, source.orientation), 85, _rgb_profile(source.image.info))


def to_model_input(img: Image.Image, side: int) -> np.ndarray:
    """Squash to side x side like Keras' `load_img(target_size=...)`, with a better filter.

    `reducing_gap` shrinks by an integer factor first (cheap box filter), then resamples.
    """
    resized = img.resize((side, side), Image.Resampling.BILINEAR, reducing_gap=2.0)
    return np.asarray(resized, dtype=np.uint8)


def make_thumbnail(img: Image.Image, max_side: int = THUMBNAIL_SIDE, quality: int = 85) -> bytes:
    # resize() is what thumbnail() does after a copy(): same picture, no full-size copy first.
    thumb = img.resize(_fit(img.size, max_side), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return _encode_jpeg(thumb, quality, _rgb_profile(img.info))


def _rgb_profile(info: dict) -> bytes | None:
    """The source's ICC profile if it describes RGB data, so re-encoded colours look the same (a CMYK or
    grey profile would be wrong on the RGB rendition)."""
    icc = info.get("icc_profile")
    ok = isinstance(icc, bytes) and icc[16:20] == b"RGB " and len(icc) <= MAX_ICC_BYTES
    return icc if ok else None


def _encode_jpeg(img: Image.Image, quality: int, icc_profile: bytes | None) -> bytes:
    out = io.BytesIO()
    # No exif/xmp arguments, so none are written; comment=b"" because Pillow otherwise copies
    # img.info["comment"] (the upload's COM text) into the file.
    img.save(out, format="JPEG", quality=quality, optimize=True, comment=b"", icc_profile=icc_profile)
    return out.getvalue()


def rendition(data: bytes, decoded: DecodedImage, max_side: int = THUMBNAIL_SIDE) -> bytes:
    """What `…/content` serves. A small, upright RGB JPEG is kept as uploaded minus its metadata:
    re-encoding it would only cost time and quality. Anything else becomes a JPEG of at most `max_side`."""
    if _serves_upload(decoded.format, decoded.width, decoded.height, decoded.source_mode, decoded.oriented, max_side):
        kept = _lossless_rendition(data, decoded.width, decoded.height)
        if kept is not None:
            return kept
    return make_thumbnail(decoded.image, max_side)


def _serves_upload(
    fmt: str, width: int, height: int, mode: str, oriented: bool, max_side: int = THUMBNAIL_SIDE
) -> bool:
    return fmt == "JPEG" and max(width, height) <= max_side and mode == "RGB" and not oriented


def _lossless_rendition(data: bytes, width: int, height: int) -> bytes | None:
    stripped = strip_jpeg_metadata(data)
    if stripped is None:
        return None
    # A last look with Pillow's own parser: what is served must still be this picture, not a broken file.
    try:
        with Image.open(io.BytesIO(stripped), formats=("JPEG",)) as check:
            return stripped if check.size == (width, height) else None
    except (OSError, SyntaxError, ValueError):
        return None


# JPEG markers (ITU-T T.81, table B.1).
_EOI, _SOS, _APP0, _APP2, _APP14, _COM = 0xD9, 0xDA, 0xE0, 0xE2, 0xEE, 0xFE
# Segments that make up the picture: SOFn frame headers, DHT and DAC tables (0xC0-0xCF but the reserved
# 0xC8), SOS, DQT, DNL, DRI. Hierarchical and reserved markers are not: such files are re-encoded.
_CODING = frozenset(range(0xC0, 0xD0)) - {0xC8} | {_SOS, 0xDB, 0xDC, 0xDD}
_METADATA = frozenset(range(_APP0, 0xF0)) | {_COM}
_KNOWN = _CODING | _METADATA
# A marker, after any number of 0xFF fill bytes.
_MARKER = re.compile(rb"\xff+([^\x00\xff])")
# In entropy-coded data 0xFF is always followed by 0x00 (stuffing), RSTn (0xD0-0xD7) or more 0xFF
# (fill); anything else ends the scan.
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def strip_jpeg_metadata(data: bytes) -> bytes | None:
    """The same JPEG, not re-encoded, without EXIF, XMP, comments, other APPn segments and anything after its
    end-of-image marker. Kept: JFIF (APP0, minus any embedded thumbnail), ICC profiles (APP2) and Adobe's
    colour-transform segment (APP14: without it some RGB files decode to wrong colours).

    None unless `data` is a JPEG this walk understands to its end: the caller re-encodes such a file rather
    than serve bytes it has not checked.
    """
    if not data.startswith(b"\xff\xd8"):
        return None
    kept, pos, in_scan, scanned = [b"\xff\xd8"], 2, False, False
    while True:
        if in_scan:  # progressive files have several scans, with tables between them
            end = _SCAN_END.search(data, pos)
            if end is None:
                return None
            kept.append(data[pos : end.start()])
            pos = end.start()
        found = _MARKER.match(data, pos)
        if found is None:
            return None
        marker, pos = found[1][0], found.end()
        if marker == _EOI:
            return b"".join(kept) + b"\xff\xd9" if scanned else None
        payload = _payload(data, pos)
        if payload is None or marker not in _KNOWN:
            return None
        kept.append(_kept_segment(marker, payload))
        pos += 2 + len(payload)
        in_scan = marker == _SOS
        scanned = scanned or in_scan


def _payload(data: bytes, pos: int) -> bytes | None:
    """The body of the segment whose 2-byte length (which counts itself) is at `pos`."""
    length = int.from_bytes(data[pos : pos + 2], "big")
    if length < 2 or pos + length > len(data):
        return None
    return data[pos + 2 : pos + length]


def _kept_segment(marker: int, payload: bytes) -> bytes:
    """The segment as served: b"" when it is metadata to drop."""
    if marker == _APP0 and payload.startswith(b"JFIF\x00") and len(payload) >= 14:
        # The JFIF header with no thumbnail: an embedded one can show what a later crop removed.
        return _segment(marker, payload[:12] + b"\x00\x00")
    if marker == _APP2 and payload.startswith(b"ICC_PROFILE\x00"):
        return _segment(marker, payload)
    if marker == _APP14 and payload.startswith(b"Adobe") and len(payload) >= 12:
        return _segment(marker, payload[:12])
    return b"" if marker in _METADATA else _segment(marker, payload)


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload
