"""Blob store pieces that need no server: keys, URLs, settings, the file store's on-disk behaviour.

The behaviour suite that runs against both backends is tests/integration/test_blob_store.py.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared.blobs import BlobSettings, InvalidBlobKey, open_blob_store, validate_key, validate_prefix
from shared.blobs_file import FileBlobStore
from shared.blobs_s3 import S3BlobStore


@pytest.mark.parametrize(
    "key",
    [
        "uploads/0123abcd/0",
        "renditions/My-Coll.2/0123456789abcdef0123456789abcdef.jpg",
        "a",
        "a_b/c-d/e.f.g",
        "x" * 255,
    ],
)
def test_valid_keys(key: str) -> None:
    assert validate_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a/",
        "a//b",
        "..",
        "../a",
        "a/../b",
        "a/./b",
        ".a",
        "a/.b",
        "a\\b",
        "a b",
        "a:b",
        "a/é",
        "a\nb",
        "x" * 256,
    ],
)
def test_invalid_keys(key: str) -> None:
    with pytest.raises(InvalidBlobKey):
        validate_key(key)


def test_invalid_key_types_and_lengths() -> None:
    with pytest.raises(InvalidBlobKey):
        validate_key(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidBlobKey):
        validate_key("/".join(["abcdefgh"] * 60))  # 539 characters


def test_prefix_may_end_with_one_slash() -> None:
    assert validate_prefix("uploads/") == "uploads"
    assert validate_prefix("uploads/job") == "uploads/job"
    for bad in ["", "/", "uploads//", "../uploads"]:
        with pytest.raises(InvalidBlobKey):
            validate_prefix(bad)


@pytest.mark.parametrize(
    "url",
    [
        "file://relative/path",  # "relative" would be a host
        "file:relative",
        "file://remote-host/abs",
        "s3://",
        "s3://Bad_Bucket/x",
        "s3://bucket/../x",
        "s3://bucket/a//b",
        "http://example.invalid/x",
        "/plain/path",
    ],
)
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        open_blob_store(url)


def test_unknown_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        open_blob_store(tmp_path.as_uri(), fsynk=False)


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ["BLOB_STORE_URL", "S3_ENDPOINT_URL", "S3_SECRET_ACCESS_KEY", "XDG_DATA_HOME"]:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)  # no .env of the developer's
    settings = BlobSettings()
    assert settings.blob_store_url == (tmp_path / ".local/share/simsearch/blobs").as_uri()
    assert settings.blob_fsync is True
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert BlobSettings().blob_store_url == (tmp_path / "data/simsearch/blobs").as_uri()


def test_settings_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BLOB_STORE_URL", "s3://simsearch/prod")
    monkeypatch.setenv("S3_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("S3_ACCESS_KEY_ID", "key")
    monkeypatch.setenv("S3_SECRET_ACCESS_KEY", "very-secret")
    monkeypatch.setenv("S3_REGION", "")  # compose passes unset variables as empty strings
    settings = BlobSettings()
    assert "very-secret" not in repr(settings)
    options = settings.blob_store_options()
    assert options["secret_access_key"] == "very-secret" and options["region"] is None
    store = settings.open_blob_store()  # creating the client contacts nothing
    assert isinstance(store, S3BlobStore) and store.bucket == "simsearch" and store._root == "prod/"
    assert store._client.meta.region_name == "us-east-1"
    assert store._client.meta.config.s3["addressing_style"] == "path"
    store.close()
    monkeypatch.setenv("BLOB_STORE_URL", "ftp://x")
    with pytest.raises(ValueError):
        BlobSettings()


def test_s3_needs_both_credentials_or_neither() -> None:
    with pytest.raises(ValueError):
        S3BlobStore("bucket", access_key_id="key", endpoint_url="http://127.0.0.1:1")


def test_file_store_leaves_no_temporary_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path, fsync=False)
    store.put("uploads/j/0", b"data")
    with pytest.raises(TypeError):
        store.put("uploads/j/1", "not bytes")  # type: ignore[arg-type]
    assert sorted(p.name for p in (tmp_path / "uploads" / "j").iterdir()) == ["0"]
    assert (tmp_path / "uploads" / "j" / "0").read_bytes() == b"data"


def test_file_store_takes_the_longest_segments(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    key = "renditions/c/" + "i" * 255
    store.put(key, b"x")  # its temporary file's name must fit NAME_MAX too
    assert store.get(key) == b"x"


def test_file_store_prunes_empty_folders_but_keeps_its_root(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = FileBlobStore(root)
    store.put("uploads/j/0", b"a")
    store.put("uploads/j/1", b"b")
    store.delete(["uploads/j/0"])
    assert (root / "uploads" / "j").is_dir()
    store.delete(["uploads/j/1"])
    assert not (root / "uploads").exists() and root.is_dir()
    store.put("uploads/j/0", b"again")  # folders come back on demand
    assert store.get("uploads/j/0") == b"again"


def test_file_store_batch_delete_prunes_every_emptied_folder_once(tmp_path: Path) -> None:
    root = tmp_path / "blobs"
    store = FileBlobStore(root)
    for key in ("uploads/j/0", "uploads/j/1", "uploads/k/0", "renditions/c/a", "renditions/c/b"):
        store.put(key, b"x")
    store.delete(["uploads/j/0", "uploads/j/1", "uploads/k/0", "renditions/c/a", "uploads/j/9"])
    assert not (root / "uploads").exists()  # j and k emptied, then their parent
    assert store.get("renditions/c/b") == b"x" and not store.exists("renditions/c/a")
    with pytest.raises(InvalidBlobKey):
        store.delete(["../outside"])  # keys are validated as on put and get


def test_file_store_sweep_keeps_young_temporary_files(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put("uploads/j/0", b"a")
    in_progress = tmp_path / "uploads" / "j" / ".1.abcd.tmp"
    in_progress.write_bytes(b"being written")
    assert store.sweep("uploads", 0) == 1
    assert in_progress.exists()  # a put may be about to rename it


def test_file_store_key_under_a_blob_is_absent(tmp_path: Path) -> None:
    store = FileBlobStore(tmp_path)
    store.put("uploads/j", b"a blob, not a folder")
    assert store.get("uploads/j/0") is None and not store.exists("uploads/j/0")
    store.delete(["uploads/j/0"])
    with pytest.raises(OSError):
        store.put("uploads/j/0", b"x")  # the file store cannot hold both; service keys never do this


def test_file_store_writes_with_the_process_umask(tmp_path: Path) -> None:
    FileBlobStore(tmp_path).put("renditions/c/a.jpg", b"x")
    mode = os.stat(tmp_path / "renditions/c/a.jpg").st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
