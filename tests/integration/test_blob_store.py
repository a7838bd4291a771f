"""One behaviour suite for both blob stores: a directory in tmp_path, and S3 on a real SeaweedFS."""

from __future__ import annotations

import os
import statistics
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import anyio
import psutil
import pytest
from botocore.exceptions import ClientError

from shared.blobs import BlobStore, InvalidBlobKey, open_blob_store
from shared.blobs_async import AsyncBlobStore
from shared.blobs_s3 import S3BlobStore
from tests.integration.seaweed import SeaweedService, s3_client, s3_options, start_seaweedfs

BUCKET = "simsearch-blobs"


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SeaweedService, str]]:
    service, endpoint = start_seaweedfs(tmp_path_factory.mktemp("seaweed"))
    client = s3_client(endpoint)
    client.create_bucket(Bucket=BUCKET)
    client.close()
    yield service, endpoint
    service.stop()


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BlobStore]:
    if request.param in ("file", "file-nofsync"):
        opened = open_blob_store((tmp_path / "blobs").as_uri(), fsync=request.param == "file")
    else:
        _, endpoint = request.getfixturevalue("seaweed")
        # A prefix per test: one bucket, no test sees another's objects.
        opened = open_blob_store(f"s3://{BUCKET}/t-{uuid.uuid4().hex[:12]}", **s3_options(endpoint))
    yield opened
    opened.close()


@pytest.mark.parametrize("size", [0, 1, 40_000, 5 * 1024 * 1024])
def test_round_trip(store: BlobStore, size: int) -> None:
    data, key = os.urandom(size), f"renditions/c/{size}.jpg"
    assert store.get(key) is None
    store.put(key, memoryview(data))  # any bytes-like object
    assert store.get(key) == data
    assert store.exists(key)


def test_put_replaces_the_value(store: BlobStore) -> None:
    store.put("renditions/c/a.jpg", b"first value, longer")
    store.put("renditions/c/a.jpg", b"second")
    assert store.get("renditions/c/a.jpg") == b"second"


def test_missing_key(store: BlobStore) -> None:
    assert store.get("uploads/nope/0") is None
    assert not store.exists("uploads/nope/0")
    store.put("uploads/job/0", b"x")
    assert store.get("uploads/job") is None  # a folder is not a blob
    assert not store.exists("uploads/job")


def test_files_stream_in_and_out(store: BlobStore, tmp_path: Path) -> None:
    # Large blobs (replica snapshots) go through local files: 20 MB crosses S3's multipart threshold.
    source = tmp_path / "in.bin"
    payload = os.urandom(20 << 20)
    source.write_bytes(payload)
    store.put_file("snapshots/c/1-ab.npz", source)
    assert store.get("snapshots/c/1-ab.npz") == payload
    target = tmp_path / "out.bin"
    assert store.get_file("snapshots/c/1-ab.npz", target) and target.read_bytes() == payload
    missing = tmp_path / "missing.bin"
    assert not store.get_file("snapshots/c/2-cd.npz", missing) and not missing.exists()


def test_get_many_keeps_order_and_reports_missing(store: BlobStore) -> None:
    present = {f"renditions/c/{i}.jpg": os.urandom(100 + i) for i in range(0, 40, 2)}
    store.put_many(present)
    keys = [f"renditions/c/{i}.jpg" for i in reversed(range(40))] + ["renditions/c/0.jpg"]
    assert store.get_many(keys) == [present.get(key) for key in keys]
    assert store.get_many([]) == []
    assert store.get_many(["renditions/c/2.jpg"]) == [present["renditions/c/2.jpg"]]


def test_put_many(store: BlobStore) -> None:
    store.put_many([("uploads/p/0", b"zero"), ("uploads/p/1", bytearray(b"one"))])
    store.put_many({"uploads/p/2": b"two"})
    store.put_many([])
    assert store.get_many([f"uploads/p/{i}" for i in range(3)]) == [b"zero", b"one", b"two"]
    with pytest.raises(InvalidBlobKey):
        store.put_many([("uploads/p/3", b"x"), ("../escape", b"x")])
    assert not store.exists("uploads/p/3")  # keys are checked before anything is written


def test_delete(store: BlobStore) -> None:
    store.put_many({"uploads/j/0": b"a", "uploads/j/1": b"b", "uploads/j/2": b"c"})
    store.delete(["uploads/j/0", "uploads/j/missing"])  # missing keys are no error
    store.delete("uploads/j/1")  # one key as a plain string
    assert [store.exists(f"uploads/j/{i}") for i in range(3)] == [False, False, True]
    store.delete([])


def test_delete_more_keys_than_one_batch(store: BlobStore) -> None:
    items = {f"uploads/big/{i}": str(i).encode() for i in range(1100)}
    store.put_many(items)
    calls = []
    if isinstance(store, S3BlobStore):  # count the DeleteObjects requests (at most 1,000 keys each)
        store._client.meta.events.register("before-call.s3.DeleteObjects", lambda **kw: calls.append(1))
    store.delete([*items, "uploads/big/missing"])
    assert store.get_many(list(items)) == [None] * len(items)
    if isinstance(store, S3BlobStore):
        assert len(calls) == 2


def test_sweep_by_age_and_prefix(store: BlobStore) -> None:
    keys = ["uploads/j1/0", "uploads/j1/1", "uploads/j2/0", "uploads2/x", "renditions/c/a.jpg"]
    store.put_many({key: b"data" for key in keys})
    assert store.sweep("uploads", older_than_s=3600) == 0  # all new
    assert all(store.exists(key) for key in keys)
    assert store.sweep("uploads/", older_than_s=0) == 3
    assert [store.exists(key) for key in keys] == [False, False, False, True, True]
    assert store.sweep("uploads", older_than_s=0) == 0
    assert store.sweep("nothing-here", older_than_s=0) == 0


def test_sweep_lists_past_one_page(store: BlobStore) -> None:
    # ListObjectsV2 returns at most 1,000 keys a page.
    store.put_many({f"uploads/many/{i}": b"." for i in range(1100)})
    assert store.sweep("uploads", older_than_s=0) == 1100
    assert not store.exists("uploads/many/0") and not store.exists("uploads/many/1099")


def test_file_sweep_removes_only_old_blobs(tmp_path: Path) -> None:
    store = open_blob_store((tmp_path / "blobs").as_uri())
    for key in ["uploads/old/0", "uploads/old/1", "uploads/new/0", "renditions/c/old.jpg"]:
        store.put(key, b"data")
    old = time.time() - 7200
    for key in ["uploads/old/0", "uploads/old/1", "renditions/c/old.jpg"]:
        os.utime(tmp_path / "blobs" / key, (old, old))
    # A put that died before its rename: removed once older than the grace period, never counted.
    leftover = tmp_path / "blobs" / "uploads" / "new" / ".0.dead.tmp"
    leftover.write_bytes(b"partial")
    os.utime(leftover, (old, old))
    assert store.sweep("uploads", older_than_s=3600) == 2
    assert [store.exists(k) for k in ["uploads/old/0", "uploads/new/0", "renditions/c/old.jpg"]] == [False, True, True]
    assert not leftover.exists()
    assert not (tmp_path / "blobs" / "uploads" / "old").exists()  # emptied folders go too


BAD_KEYS = [
    "",
    "/etc/passwd",
    "../outside",
    "uploads/../../outside",
    "uploads/./0",
    "uploads//0",
    "uploads/0/",
    "..",
    ".hidden",
    "uploads/.0.tmp",
    "uploads\\..\\outside",
    "C:/x",
    "uploads/a b",
    "uploads/\x00",
    "uploads/ü",
    "x" * 600,
]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_key_validation_rejects_escapes(store: BlobStore, key: str, tmp_path: Path) -> None:
    calls = [
        lambda: store.put(key, b"x"),
        lambda: store.put_many([(key, b"x")]),
        lambda: store.get(key),
        lambda: store.get_many(["uploads/ok", key]),
        lambda: store.exists(key),
        lambda: store.delete([key]),
    ]
    if not key.endswith("/"):  # a sweep prefix may end with one slash
        calls.append(lambda: store.sweep(key, 0))
    for call in calls:
        with pytest.raises(InvalidBlobKey):
            call()
    assert not (tmp_path / "outside").exists()


def test_concurrent_puts_of_one_key_leave_one_complete_value(store: BlobStore) -> None:
    values = [bytes([i]) * 1_000_000 for i in range(8)]
    seen: list[bytes | None] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            seen.append(store.get("renditions/c/race.jpg"))

    reader = threading.Thread(target=read)
    reader.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda v: [store.put("renditions/c/race.jpg", v) for _ in range(3)], values))
    finally:
        done.set()
        reader.join()
    assert store.get("renditions/c/race.jpg") in values
    assert all(value is None or value in values for value in seen)  # never torn, never partial


def test_async_wrapper(store: BlobStore) -> None:
    async def main() -> None:
        blobs = AsyncBlobStore(store)
        await blobs.put("uploads/a/0", b"zero")
        await blobs.put_many({"uploads/a/1": b"one"})
        assert await blobs.get("uploads/a/0") == b"zero"
        assert await blobs.get_many(["uploads/a/1", "uploads/a/9"]) == [b"one", None]
        assert await blobs.exists("uploads/a/1")
        await blobs.delete("uploads/a/1")
        assert await blobs.sweep("uploads", 0) == 1
        assert await blobs.get("uploads/a/0") is None

    anyio.run(main)


@pytest.mark.parametrize("store", ["file", "file-nofsync", "s3"], indirect=True)
def test_put_get_latency_40kb(store: BlobStore, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture) -> None:
    """What a rendition costs: one put when indexed, one get when served (40 KB ~ a 512 px JPEG)."""
    data = os.urandom(40_000)
    puts, gets = [], []
    for i in range(500):
        start = time.perf_counter()
        store.put(f"renditions/bench/{i}.jpg", data)
        middle = time.perf_counter()
        assert store.get(f"renditions/bench/{i}.jpg") == data
        puts.append(middle - start)
        gets.append(time.perf_counter() - middle)
    both = [p + g for p, g in zip(puts, gets, strict=True)]
    p50 = {name: statistics.median(values) * 1000 for name, values in [("put", puts), ("get", gets), ("both", both)]}
    p95 = sorted(both)[int(len(both) * 0.95)] * 1000
    with capsys.disabled():
        print(
            f"\n{request.node.callspec.id}: 40 KB x 500, p50 put {p50['put']:.2f} ms, get {p50['get']:.2f} ms, "
            f"put+get {p50['both']:.2f} ms (p95 {p95:.2f} ms)"
        )
    assert p50["get"] < 20  # a gallery page reads dozens of renditions (in parallel on S3)


def test_s3_refuses_wrong_credentials(seaweed: tuple[SeaweedService, str]) -> None:
    _, endpoint = seaweed
    options = {**s3_options(endpoint), "secret_access_key": "wrong", "max_attempts": 1}
    with open_blob_store(f"s3://{BUCKET}/x", **options) as store, pytest.raises(ClientError) as raised:
        store.put("uploads/j/0", b"x")
    assert raised.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_s3_missing_bucket_is_an_error_not_a_missing_key(seaweed: tuple[SeaweedService, str]) -> None:
    _, endpoint = seaweed
    with open_blob_store("s3://no-such-bucket", **s3_options(endpoint)) as store, pytest.raises(ClientError):
        store.get("uploads/j/0")


def test_seaweedfs_uses_loopback_only(seaweed: tuple[SeaweedService, str]) -> None:
    service, _ = seaweed
    connections = psutil.Process(service.proc.pid).net_connections(kind="inet")
    assert connections
    for conn in connections:
        assert conn.laddr.ip == "127.0.0.1", conn
        assert not conn.raddr or conn.raddr.ip == "127.0.0.1", conn
