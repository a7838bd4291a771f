"""Finding the image files to index, and telling images from other files without decoding them."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

# The formats the API accepts (it decodes the first frame of a GIF).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"})
HEADER_BYTES = 16


def sniff_image(header: bytes) -> str | None:
    """The image format these leading bytes announce, or None: a cheap guard against uploading
    files that merely carry an image extension (a text file named .jpg, a zero-byte file)."""
    if header.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if header.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if header.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if header[:4] == b"RIFF" and header[8:12] == b"WEBP":
        return "webp"
    if header.startswith(b"BM") and len(header) >= 14:
        return "bmp"
    return None


@dataclass(frozen=True)
class Candidate:
    path: Path
    image_id: str
    size: int


@dataclass
class Discovery:
    """What a walk over the user's paths found."""

    images: list[Candidate] = field(default_factory=list)
    rejected: list[tuple[Path, str]] = field(default_factory=list)  # looked like images, are not
    ignored: list[Path] = field(default_factory=list)  # other extensions, found inside directories
    duplicates: list[Path] = field(default_factory=list)  # same bytes as an earlier file

    @property
    def image_ids(self) -> list[str]:
        return [c.image_id for c in self.images]


def has_image_extension(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def walk(paths: Iterable[str | os.PathLike[str]]) -> tuple[list[Path], list[Path]]:
    """Expand directories recursively (sorted, so runs are reproducible).

    Returns (candidates, ignored). Files inside directories are candidates only with an image
    extension; a file named on the command line is always a candidate (the user asked for it), and
    its content still has to pass `sniff_image`. Raises FileNotFoundError for a missing path.
    """
    candidates: list[Path] = []
    ignored: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            for found in sorted(p for p in path.rglob("*") if p.is_file()):
                (candidates if has_image_extension(found) else ignored).append(found)
        elif path.is_file():
            candidates.append(path)
        else:
            raise FileNotFoundError(f"no such file or directory: {path}")
    return candidates, ignored


def examine(path: Path) -> Candidate | str:
    """The file's id if it is an image, else the reason it is not (one read, hashed in pieces)."""
    try:
        with path.open("rb") as fh:
            header = fh.read(HEADER_BYTES)
            if not header:
                return "empty file"
            if sniff_image(header) is None:
                return "not an image: the content is not JPEG, PNG, WebP, BMP or GIF"
            fh.seek(0)
            digest = hashlib.file_digest(fh, "sha256")
            size = fh.tell()
    except OSError as exc:
        return f"cannot read: {exc.strerror or exc}"
    # Must match the server's ids (SHA-256 of the bytes, first 32 hex digits): lookup relies on it.
    return Candidate(path, digest.hexdigest()[:32], size)


def discover(paths: Iterable[str | os.PathLike[str]]) -> Discovery:
    """Walk the paths, check and hash every candidate, drop files identical to an earlier one."""
    candidates, ignored = walk(paths)
    found = Discovery(ignored=ignored)
    seen: set[str] = set()
    for path in dict.fromkeys(candidates):  # a file named twice (or inside a named directory) once
        outcome = examine(path)
        if isinstance(outcome, str):
            found.rejected.append((path, outcome))
        elif outcome.image_id in seen:
            found.duplicates.append(path)
        else:
            seen.add(outcome.image_id)
            found.images.append(outcome)
    return found
