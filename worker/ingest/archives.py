"""Reading the members of an uploaded archive (.zip, .tar, .tar.gz) one at a time, within limits.

An archive is read from a local file, member by member, each member at most `max_member_bytes`
in memory: a zip bomb costs the bytes read before a limit trips, never its expanded size. Sizes
declared in headers are checked first but not trusted (reads are capped as well). Every member
comes out in archive order (a redelivered expansion walks the same sequence), either with its
bytes or with the reason it was refused.

Every entry counts toward the limits, directories, links and headers included: an archive of
millions of empty directory entries is refused at `max_members`, not walked. A tar's headers are
not kept (tarfile would keep each one for the archive's life, ~500 B apiece); a zip's central
directory is sized from its end record before zipfile reads it whole.
"""

from __future__ import annotations

import tarfile
import unicodedata
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from shared.imaging import archive_kind

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".gz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".7z", ".rar")
READ_BLOCK = 1 << 20
HEADER_BYTES = 512  # what each entry costs the expansion budget beyond its data (a tar header block)


@dataclass(frozen=True)
class ArchiveLimits:
    max_members: int = 100_000
    max_total_bytes: int = 8 << 30  # expanded, all members together
    max_member_bytes: int = 32 << 20  # the per-image upload limit
    max_ratio: float = 200.0  # expanded / compressed, per zip member and for the whole archive


@dataclass(frozen=True)
class Member:
    name: str
    data: bytes | None = None
    error: str | None = None  # the item's error code when refused
    detail: str = ""


def display(raw: str) -> str:
    """A name as text: bytes that were not UTF-8 (kept by tarfile as surrogates, which no JSON
    encoder takes) become U+FFFD, control characters go, at most 1,024 characters."""
    text = raw.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(ch for ch in text if unicodedata.category(ch)[0] != "C").strip()[:1024]


def member_name(raw: str) -> str | None:
    """The member's path as a display name, or None when it would escape the archive (absolute,
    a drive, `..`): the name is never used as a path, but such a member is refused all the same."""
    name = raw.replace("\\", "/")
    parts = PurePosixPath(name).parts
    if not parts or name.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts:
        return None
    return display(name) or None


def is_nested(name: str, head: bytes) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES) or archive_kind(head) is not None


class _Budget:
    def __init__(self, limits: ArchiveLimits, archive_bytes: int) -> None:
        self.limits = limits
        self.members = 0
        self.total = 0
        self.archive_bytes = max(archive_bytes, 1)

    def exhausted(self) -> Member | None:
        if self.members > self.limits.max_members:
            return Member("(archive)", error="too_many_members", detail=f"over {self.limits.max_members} members")
        if self.total > self.limits.max_total_bytes:
            detail = f"expands past {self.limits.max_total_bytes} bytes"
            return Member("(archive)", error="archive_too_large", detail=detail)
        if self.total > 1 << 20 and self.total / self.archive_bytes > self.limits.max_ratio:
            detail = f"expands over {self.limits.max_ratio:.0f} times its size (a zip bomb?)"
            return Member("(archive)", error="archive_too_large", detail=detail)
        return None


def _read_capped(stream: IO[bytes], cap: int, budget: _Budget) -> bytes | None:
    """The stream's bytes, or None past `cap` (what was read still counts against the budget)."""
    out = bytearray()
    while block := stream.read(min(READ_BLOCK, cap + 1 - len(out))):
        out += block
        budget.total += len(block)
        if len(out) > cap:
            return None
        if budget.exhausted():
            return None
    return bytes(out)


def members(path: Path, limits: ArchiveLimits) -> Iterator[Member]:
    """Every file member of the archive at `path`, in order. The last one yielded is an
    `(archive)` error when a limit for the whole archive tripped (the rest is not read)."""
    with path.open("rb") as fh:
        kind = archive_kind(fh.read(512))
    budget = _Budget(limits, path.stat().st_size)
    if kind == "zip":
        yield from _zip_members(path, budget)
    elif kind == "tar":
        yield from _tar_members(path, budget)
    else:
        yield Member("(archive)", error="invalid_archive", detail="not a zip or tar archive")


def _screen(raw_name: str, declared: int, budget: _Budget) -> Member | str:
    """The member's safe name, or its refusal before any byte is read."""
    name = member_name(raw_name)
    if name is None:
        return Member(
            display(raw_name) or "(unnamed)", error="unsafe_path", detail="the member's path leaves the archive"
        )
    if declared > budget.limits.max_member_bytes:
        detail = f"{declared} bytes, over the per-file limit of {budget.limits.max_member_bytes}"
        return Member(name, error="file_too_large", detail=detail)
    if name.lower().endswith(ARCHIVE_SUFFIXES):
        return Member(name, error="nested_archive", detail="archives inside archives are not expanded")
    return name


def _finish(name: str, data: bytes | None, budget: _Budget) -> Member:
    if data is None:
        if budget.exhausted() is None:
            detail = f"over the per-file limit of {budget.limits.max_member_bytes} bytes"
            return Member(name, error="file_too_large", detail=detail)
        return Member(name, error="archive_too_large", detail="the archive's expansion limit was reached")
    if is_nested(name, data[:512]):
        return Member(name, error="nested_archive", detail="archives inside archives are not expanded")
    return Member(name, data=data)


def _zip_entries(path: Path) -> tuple[int, int] | None:
    """(entries, central directory bytes) from the zip's end record, read without the directory."""
    with path.open("rb") as fh:
        end = zipfile._EndRecData(fh)  # type: ignore[attr-defined]  # the stdlib's own reader
    if not end:
        return None
    return end[zipfile._ECD_ENTRIES_TOTAL], end[zipfile._ECD_SIZE]  # type: ignore[attr-defined]


def _zip_members(path: Path, budget: _Budget) -> Iterator[Member]:
    try:
        declared = _zip_entries(path)
        if declared is not None and declared[0] > budget.limits.max_members:
            yield Member(
                "(archive)", error="too_many_members", detail=f"{declared[0]} entries, over {budget.limits.max_members}"
            )
            return
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        yield Member("(archive)", error="invalid_archive", detail=f"unreadable zip: {exc}")
        return
    with archive:
        for info in archive.infolist():
            budget.members += 1
            budget.total += HEADER_BYTES
            if stop := budget.exhausted():
                yield stop
                return
            if info.is_dir():
                continue
            screened = _screen(info.filename, info.file_size, budget)
            if isinstance(screened, Member):
                yield screened
                continue
            if info.compress_size and info.file_size / info.compress_size > budget.limits.max_ratio:
                ratio = info.file_size / info.compress_size
                yield Member(screened, error="suspicious_ratio", detail=f"compressed {ratio:.0f}:1 (a zip bomb?)")
                continue
            try:
                with archive.open(info) as stream:
                    data = _read_capped(stream, budget.limits.max_member_bytes, budget)
            except (zipfile.BadZipFile, OSError, NotImplementedError, RuntimeError) as exc:
                yield Member(screened, error="invalid_archive", detail=f"unreadable member: {exc}"[:300])
                continue
            yield _finish(screened, data, budget)
            if stop := budget.exhausted():
                yield stop
                return


MAX_TAR_HEADER = 1 << 20  # a long name or pax header; tarfile would read any size whole


class _GuardedTarInfo(tarfile.TarInfo):
    """Refuses extended headers (GNU long names, pax records) too large to be honest, which
    tarfile would otherwise read into memory whole before any limit of ours runs."""

    def _proc_gnulong(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_TAR_HEADER:
            raise tarfile.HeaderError(f"a {self.size}-byte long-name header")
        return super()._proc_gnulong(tarfile_)

    def _proc_pax(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.size > MAX_TAR_HEADER:
            raise tarfile.HeaderError(f"a {self.size}-byte pax header")
        return super()._proc_pax(tarfile_)


def _tar_members(path: Path, budget: _Budget) -> Iterator[Member]:
    try:
        # Stream mode: members in order, no seeking, decompression as it goes.
        archive = tarfile.open(path, mode="r|*", tarinfo=_GuardedTarInfo)  # noqa: SIM115 (closed by the with below)
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Member("(archive)", error="invalid_archive", detail=f"unreadable tar: {exc}")
        return
    try:
        with archive:
            for info in archive:
                archive.members.clear()  # stream mode needs none back; kept, they grow with the archive
                budget.members += 1
                budget.total += HEADER_BYTES
                if stop := budget.exhausted():
                    yield stop
                    return
                if info.isdir():
                    continue
                if not info.isfile():  # links, devices, FIFOs: never followed
                    name = display(info.name) or "(unnamed)"
                    yield Member(name, error="not_a_file", detail="links and special files are refused")
                    continue
                screened = _screen(info.name, info.size, budget)
                if isinstance(screened, Member):
                    # Skipping a member in a compressed stream still inflates it: it counts.
                    budget.total += info.size
                    yield screened
                    if stop := budget.exhausted():
                        yield stop
                        return
                    continue
                stream = archive.extractfile(info)
                data = _read_capped(stream, budget.limits.max_member_bytes, budget) if stream else b""
                yield _finish(screened, data, budget)
                if stop := budget.exhausted():
                    yield stop
                    return
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Member("(archive)", error="invalid_archive", detail=f"unreadable tar: {exc}"[:300])
