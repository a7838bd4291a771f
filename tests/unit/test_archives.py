"""Archive members, read within limits (worker/ingest/archives.py) and turned into items
(worker/ingest/expanding.py)."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

from worker.ingest.archives import ArchiveLimits, member_name, members
from worker.ingest.expanding import url_lines


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
    # A zip says in its end record how many entries its central directory holds: one over the
    # limit is refused before zipfile reads that directory whole (~500 B of memory per entry).
    path = _zip(tmp_path / "d.zip", {f"{i}.jpg": b"x" for i in range(10)})
    got = list(members(path, ArchiveLimits(max_members=3)))
    assert [m.error for m in got] == ["too_many_members"] and "10 entries" in got[0].detail
    # A tar is read as a stream: its first members come out, then the limit trips.
    tar = tmp_path / "d.tar"
    with tarfile.open(tar, "w") as tf:
        for i in range(10):
            info = tarfile.TarInfo(f"{i}.jpg")
            info.size = 1
            tf.addfile(info, io.BytesIO(b"x"))
    got = list(members(tar, ArchiveLimits(max_members=3)))
    assert [m.error for m in got] == [None, None, None, "too_many_members"]


def test_directory_entries_count_toward_the_limits(tmp_path: Path) -> None:
    """4,000,000 directory entries took a worker from 0.8 to 2.8 GB and ended `succeeded`: every
    entry is a member, and each costs the expansion budget its header."""
    tar = tmp_path / "dirs.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        for i in range(5000):
            info = tarfile.TarInfo(f"d{i}/")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        info = tarfile.TarInfo("last.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    got = list(members(tar, ArchiveLimits(max_members=1000)))
    assert [m.error for m in got] == ["too_many_members"]
    # Headers are expansion too: 5,000 of them are 2.5 MB from a ~30 KB upload (ratio limit).
    got = list(members(tar, ArchiveLimits(max_ratio=20)))
    assert got[-1].error == "archive_too_large" and all(m.name != "last.jpg" for m in got)
    zipped = tmp_path / "dirs.zip"
    with zipfile.ZipFile(zipped, "w") as zf:
        for i in range(2000):
            zf.writestr(f"d{i}/", b"")
        zf.writestr("last.jpg", b"abc")
    assert [m.error for m in members(zipped, ArchiveLimits(max_members=1000))] == ["too_many_members"]


def test_a_tar_of_many_entries_keeps_no_headers(tmp_path: Path) -> None:
    import tracemalloc

    tar = tmp_path / "many.tar"
    with tarfile.open(tar, "w") as tf:
        for i in range(20000):
            info = tarfile.TarInfo(f"d{i}/")
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
    tracemalloc.start()
    got = list(members(tar, ArchiveLimits(max_ratio=1e9)))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert got == []  # directories only: nothing to index, no limit tripped at 20,000
    assert peak < 2_000_000, peak  # kept headers would be ~10 MB


def test_names_that_are_not_utf8_are_shown_not_fatal(tmp_path: Path) -> None:
    """tarfile keeps undecodable name bytes as surrogates, which no JSON encoder takes: a refused
    member's name must still serialise (a job once stayed `running` forever on one)."""
    import json

    tar = tmp_path / "names.tar"
    with tarfile.open(tar, "w", format=tarfile.GNU_FORMAT, encoding="utf-8", errors="surrogateescape") as tf:
        info = tarfile.TarInfo("good.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        info = tarfile.TarInfo("../\udcff.jpg")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
        link = tarfile.TarInfo("link\udcfe.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "good.jpg"
        tf.addfile(link)
    got = list(members(tar, ArchiveLimits()))
    assert [(m.error or "ok") for m in got] == ["ok", "unsafe_path", "not_a_file"]
    assert got[1].name == "../\ufffd.jpg" and got[2].name == "link\ufffd.jpg"
    json.dumps([m.name for m in got])  # serialisable


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
