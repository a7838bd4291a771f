"""Archive members, read within limits (worker/archives.py) and turned into items (worker/expanding.py)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

from worker.archives import ArchiveLimits, member_name, members
from worker.expanding import url_lines


def _zip(path: Path, members_: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", method) as zf:
        for name, data in members_.items():
            zf.writestr(name, data)
    return path


def test_member_names() -> None:
    assert member_name("a/b/c.jpg") == "a/b/c.jpg"
    assert member_name("a\\b.jpg") == "a/b.jpg"
    for bad in ("../x.jpg", "a/../../x.jpg", "/etc/passwd", "C:/x.jpg", "a\\..\\..\\x.jpg"):
        assert member_name(bad) is None, bad


def test_zip_members_in_order_with_refusals(tmp_path: Path) -> None:
    path = _zip(tmp_path / "a.zip", {"x/1.jpg": b"one", "../2.jpg": b"two", "in.zip": b"PK\x03\x04", "3.jpg": b"3"})
    got = [(m.name, m.data, m.error) for m in members(path, ArchiveLimits())]
    assert got == [
        ("x/1.jpg", b"one", None),
        ("../2.jpg", None, "unsafe_path"),
        ("in.zip", None, "nested_archive"),
        ("3.jpg", b"3", None),
    ]


def test_a_member_sniffed_as_an_archive_is_nested(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as zf:
        zf.writestr("x.jpg", b"x")
    path = _zip(tmp_path / "a.zip", {"photo.jpg": inner.getvalue()})
    assert [m.error for m in members(path, ArchiveLimits())] == ["nested_archive"]


def test_ratio_and_size_limits(tmp_path: Path) -> None:
    path = _zip(tmp_path / "b.zip", {"zeros.jpg": bytes(5 << 20), "ok.jpg": b"fine"})
    limits = ArchiveLimits(max_member_bytes=1 << 20, max_ratio=50)
    assert [(m.name, m.error) for m in members(path, limits)] == [("zeros.jpg", "file_too_large"), ("ok.jpg", None)]
    roomy = ArchiveLimits(max_member_bytes=8 << 20, max_ratio=50)
    assert [m.error for m in members(path, roomy)] == ["suspicious_ratio", None]


def test_total_expansion_stops_the_archive(tmp_path: Path) -> None:
    data = {f"{i}.jpg": bytes(range(256)) * 4096 for i in range(10)}  # 1 MiB each, barely compressible
    path = _zip(tmp_path / "c.zip", data, zipfile.ZIP_STORED)
    got = list(members(path, ArchiveLimits(max_total_bytes=3 << 20)))
    assert got[-1].name == "(archive)" and got[-1].error == "archive_too_large"
    assert len(got) <= 5


def test_member_count_limit(tmp_path: Path) -> None:
    path = _zip(tmp_path / "d.zip", {f"{i}.jpg": b"x" for i in range(10)})
    got = list(members(path, ArchiveLimits(max_members=3)))
    assert [m.error for m in got] == [None, None, None, "too_many_members"]


def test_tar_refuses_links_and_reads_files(tmp_path: Path) -> None:
    path = tmp_path / "e.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        info = tarfile.TarInfo("ok.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("passwd.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    got = [(m.name, m.data, m.error) for m in members(path, ArchiveLimits())]
    assert got == [("ok.jpg", b"abc", None), ("passwd.jpg", None, "not_a_file")]


def test_not_an_archive(tmp_path: Path) -> None:
    path = tmp_path / "f.zip"
    path.write_bytes(b"hello")
    assert [m.error for m in members(path, ArchiveLimits())] == ["invalid_archive"]


def test_url_lines() -> None:
    lines = [
        "url,metadata",
        "https://example.com/a.jpg",
        '"https://example.com/b,c.jpg","{""k"": 1}"',
        "  ",
        "# comment",
        "gopher://x/y",
        'https://example.com/d.jpg,"[1, 2]"',
    ]
    items = [inp for inp, _ in url_lines(lines, 1024)]
    assert [(i.url, i.metadata, i.rejected.error if i.rejected else None) for i in items] == [
        ("https://example.com/a.jpg", None, None),
        ("https://example.com/b,c.jpg", {"k": 1}, None),
        (None, None, "invalid_url"),
        (None, None, "invalid_metadata"),
    ]


def test_a_huge_tar_long_name_header_is_refused_unread(tmp_path: Path) -> None:
    # tarfile would read the whole 64 MiB GNU long-name block into memory before any member check.
    path = tmp_path / "longname.tgz"
    with tarfile.open(path, "w:gz", format=tarfile.GNU_FORMAT) as tf:
        info = tarfile.TarInfo("a" * (64 << 20))
        info.size = 1
        tf.addfile(info, io.BytesIO(b"x"))
    got = list(members(path, ArchiveLimits()))
    assert [m.error for m in got] == ["invalid_archive"]
    assert "long-name header" in got[0].detail
