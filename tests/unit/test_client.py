"""The Python client and the CLI's file handling, without a server: HTTP answered by httpx.MockTransport."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from shared.imaging import content_id
from simsearch_client import JobTimeout, SimsearchClient, SimsearchConnectionError, SimsearchError, image_id_of
from simsearch_client.files import discover, sniff_image
from simsearch_client.indexer import plan, upload
from tests.images import photo_bytes

Handler = Callable[[httpx.Request], httpx.Response]


def make_client(handler: Handler, api_key: str | None = None) -> SimsearchClient:
    return SimsearchClient("http://api.test/", api_key=api_key, transport=httpx.MockTransport(handler))


def job_body(job_id: str, status: str, done: int = 0, total: int = 1, **extra: object) -> dict:
    return {
        "job_id": job_id,
        "type": "index",
        "status": status,
        "collection": "c",
        "progress": {"total": total, "done": done, "failed": 0},
        "result": None,
        "errors": [],
        "created_at": "2026-01-01T00:00:00.000Z",
        **extra,
    }


# -- errors, auth, ids ---------------------------------------------------------------------------


def test_api_error_body_becomes_simsearch_error() -> None:
    client = make_client(
        lambda r: httpx.Response(404, json={"error": "collection_not_found", "detail": "no collection 'x'"})
    )
    with pytest.raises(SimsearchError) as info:
        client.collection("x")
    assert (info.value.status, info.value.code, info.value.detail) == (404, "collection_not_found", "no collection 'x'")
    assert str(info.value) == "collection_not_found: no collection 'x'"


def test_validation_error_list_is_readable() -> None:
    detail = [{"loc": ["query", "k"], "msg": "Input should be greater than or equal to 1", "type": "x"}]
    client = make_client(lambda r: httpx.Response(422, json={"error": "validation_error", "detail": detail}))
    with pytest.raises(SimsearchError) as info:
        client.collections()
    assert info.value.detail == detail  # kept as sent, for programs
    assert str(info.value) == "validation_error: query.k: Input should be greater than or equal to 1"


def test_non_api_error_body_keeps_status_and_text() -> None:
    client = make_client(lambda r: httpx.Response(502, text="<html>Bad Gateway</html>"))
    with pytest.raises(SimsearchError) as info:
        client.collections()
    assert (info.value.status, info.value.code) == (502, "http_502")
    assert "Bad Gateway" in info.value.detail


def test_connection_error_names_the_url() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("[Errno 111] Connection refused", request=request)

    with pytest.raises(SimsearchConnectionError) as info:
        make_client(refuse).collections()
    assert info.value.code == "connection_error" and info.value.status is None
    assert "http://api.test" in info.value.detail and "Connection refused" in info.value.detail
    assert isinstance(info.value, SimsearchError)  # one except clause catches every client error


@pytest.mark.parametrize(("key", "expected"), [("s3cret", "Bearer s3cret"), (None, None), ("", None)])
def test_authorization_header_only_with_a_key(key: str | None, expected: str | None) -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json=[])

    make_client(handler, api_key=key).collections()
    assert seen == [expected]


def test_image_id_matches_the_server_derivation() -> None:
    data = photo_bytes(5)
    assert image_id_of(data) == content_id(data)
    assert len(image_id_of(b"")) == 32 and image_id_of(b"") == "e3b0c44298fc1c149afbf4c8996fb924"
    assert SimsearchClient.image_id_of(data) == image_id_of(data)


# -- jobs, lookup, search, export, index ---------------------------------------------------------


def test_wait_long_polls_until_a_final_status() -> None:
    states = iter(["queued", "running", "partial"])
    waits: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/jobs/j1"
        waits.append(request.url.params["wait"])
        return httpx.Response(200, json=job_body("j1", next(states)))

    seen: list[str] = []
    job = make_client(handler).wait("j1", timeout=600, on_progress=lambda j: seen.append(j["status"]))
    assert job["status"] == "partial"
    assert waits == ["30.0", "30.0", "30.0"]
    assert seen == ["queued", "running", "partial"]


def test_wait_gives_up_after_its_timeout() -> None:
    client = make_client(lambda r: httpx.Response(200, json=job_body("j1", "running")))
    with pytest.raises(JobTimeout) as info:
        client.wait("j1", timeout=0)
    assert info.value.code == "job_timeout" and "still running" in info.value.detail


def test_lookup_sends_at_most_10000_ids_per_request() -> None:
    ids = [f"{i:032x}" for i in range(25_000)]
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/v1/collections/c/images/lookup"
        batch = json.loads(request.content)["image_ids"]
        sizes.append(len(batch))
        return httpx.Response(200, json={"existing": [i for i in batch if int(i, 16) % 1000 == 0]})

    existing = make_client(handler).lookup("c", ids + ids[:5])  # repeats are asked once
    assert sizes == [10_000, 10_000, 5_000]
    assert existing == {f"{i:032x}" for i in range(0, 25_000, 1000)}


def test_search_submits_the_file_then_returns_the_result(tmp_path: Path) -> None:
    query = tmp_path / "query.jpg"
    query.write_bytes(photo_bytes(1))
    result = {"matches": [{"image_id": "a" * 32, "filename": "x.jpg", "similarity": 0.9}], "collection_size": 3}

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert request.url.path == "/v1/collections/pets/search"
            assert dict(request.url.params) == {"k": "3", "min_similarity": "0.5", "wait": "30.0"}
            assert b'name="file"; filename="query.jpg"' in request.content
            # An API older than `wait` on searches: 202, then the job is long-polled.
            return httpx.Response(202, json={"job_id": "s1", "status_url": "/v1/jobs/s1", "total": 1})
        return httpx.Response(200, json=job_body("s1", "succeeded", result=result))

    assert make_client(handler).search("pets", query, k=3, min_similarity=0.5) == result


def test_a_search_answered_within_its_post_takes_one_request() -> None:
    result = {"matches": [{"image_id": "a" * 32, "filename": "x.jpg", "similarity": 0.9}], "collection_size": 3}
    requests: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        assert request.method == "POST" and request.url.params["wait"] == "5.0"
        return httpx.Response(200, json=job_body("s1", "succeeded", result=result) | {"type": "search"})

    assert make_client(handler).search_by_id("pets", "b" * 32, timeout=5) == result
    assert len(requests) == 1


def test_failed_search_job_raises_its_error() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            assert json.loads(request.content) == {"image_id": "b" * 32}
            return httpx.Response(202, json={"job_id": "s1", "status_url": "/v1/jobs/s1", "total": 1})
        failed = {"error": "image_not_found", "detail": "deleted meanwhile"}
        return httpx.Response(200, json=job_body("s1", "failed", result=failed))

    with pytest.raises(SimsearchError) as info:
        make_client(handler).search_by_id("pets", "b" * 32)
    assert (info.value.status, info.value.code, info.value.detail) == (None, "image_not_found", "deleted meanwhile")


def test_export_streams_into_the_file_object_and_maps_errors() -> None:
    body = b"image_id,filename,0\n" + b"".join(f"{i:032x},f{i}.jpg,0.5\n".encode() for i in range(1000))

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.params["format"] == "npy":
            return httpx.Response(409, json={"error": "empty_collection", "detail": "no vectors yet"})
        return httpx.Response(200, content=body)

    client = make_client(handler)
    sink = io.BytesIO()
    assert client.export("c", "csv", sink) == len(body)
    assert sink.getvalue() == body
    with pytest.raises(SimsearchError) as info:
        client.export("c", "npy", io.BytesIO())
    assert (info.value.status, info.value.code) == (409, "empty_collection")


def test_index_sends_files_and_metadata() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.content.count(b'name="files"') == 2
        assert b'name="metadata"' in request.content and b'{"a.jpg": {"label": "cat"}}' in request.content
        return httpx.Response(202, json={"job_id": "i1", "status_url": "/v1/jobs/i1", "total": 2})

    accepted = make_client(handler).index("c", [("a.jpg", b"1"), ("b.jpg", b"2")], metadata={"a.jpg": {"label": "cat"}})
    assert accepted["job_id"] == "i1"


# -- file discovery ------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "GIF"])
def test_sniff_recognises_every_accepted_format(fmt: str) -> None:
    assert sniff_image(photo_bytes(2, fmt)[:16]) is not None


@pytest.mark.parametrize("data", [b"", b"hello, world\n", b"%PDF-1.4\n", b"RIFF\x00\x00\x00\x00WAVEfmt ", b"BM"])
def test_sniff_rejects_other_content(data: bytes) -> None:
    assert sniff_image(data) is None


def test_discovery_recurses_and_checks_content(tmp_path: Path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    good = {
        "a.jpg": photo_bytes(1),
        "sub/b.PNG": photo_bytes(2, "PNG"),  # extensions compare case-insensitively
        "sub/deeper/c.webp": photo_bytes(3, "WEBP"),
        "sub/png_named.jpg": photo_bytes(4, "PNG"),  # the server sniffs too: a mislabelled image is fine
    }
    for name, data in good.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "bad.jpg").write_text("not a jpeg at all\n")
    (tmp_path / "empty.gif").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "photo_as.dat").write_bytes(photo_bytes(5))  # inside a folder: extension decides
    (tmp_path / "sub" / "copy.jpg").write_bytes(good["a.jpg"])

    found = discover([tmp_path])
    assert {c.path.relative_to(tmp_path).as_posix() for c in found.images} == set(good)
    assert {c.image_id for c in found.images} == {content_id(d) for d in good.values()}
    reasons = {p.name: r for p, r in found.rejected}
    assert set(reasons) == {"bad.jpg", "empty.gif"}
    assert reasons["bad.jpg"].startswith("not an image") and reasons["empty.gif"] == "empty file"
    assert sorted(p.name for p in found.ignored) == ["notes.txt", "photo_as.dat"]
    assert [p.name for p in found.duplicates] == ["copy.jpg"]


def test_a_file_named_explicitly_is_judged_by_content(tmp_path: Path) -> None:
    (tmp_path / "photo.dat").write_bytes(photo_bytes(5))
    (tmp_path / "readme.md").write_text("# hi")
    found = discover([tmp_path / "photo.dat", tmp_path / "readme.md", tmp_path / "photo.dat"])
    assert [c.path.name for c in found.images] == ["photo.dat"]
    assert [p.name for p, _ in found.rejected] == ["readme.md"]
    with pytest.raises(FileNotFoundError, match="nowhere"):
        discover([tmp_path / "nowhere"])


# -- chunked, concurrent, resumable upload -------------------------------------------------------


class FakeApi:
    """Just enough of the API for the uploader: lookup, index (one job per request), job polls."""

    def __init__(self, indexed: set[str], fail_names: set[str] | None = None) -> None:
        self.indexed = indexed
        self.fail_names = fail_names or set()
        self.requests: list[list[str]] = []  # file names per index request
        self.jobs: dict[str, tuple[list[str], int]] = {}  # job id -> (names, polls so far)
        self.lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/lookup"):
            ids = json.loads(request.content)["image_ids"]
            return httpx.Response(200, json={"existing": [i for i in ids if i in self.indexed]})
        if path.endswith("/images"):
            names = [part.split(b'"')[0].decode() for part in request.content.split(b'filename="')[1:]]
            with self.lock:
                self.requests.append(names)
                job_id = f"j{len(self.requests)}"
                self.jobs[job_id] = (names, 0)
            return httpx.Response(202, json={"job_id": job_id, "status_url": f"/v1/jobs/{job_id}", "total": 1})
        return self._job(path.rsplit("/", 1)[1])

    def _job(self, job_id: str) -> httpx.Response:
        with self.lock:
            names, polls = self.jobs[job_id]
            self.jobs[job_id] = (names, polls + 1)
        if polls == 0:  # first poll: half done, so progress is reported in steps
            return httpx.Response(200, json=job_body(job_id, "running", done=len(names) // 2, total=len(names)))
        errors = [
            {"index": i, "filename": n, "image_id": None, "error": "invalid_image", "detail": "truncated"}
            for i, n in enumerate(names)
            if n in self.fail_names
        ]
        created = [f"{i:032x}" for i, n in enumerate(names) if n not in self.fail_names]
        body = job_body(job_id, "partial" if errors else "succeeded", done=len(names), total=len(names))
        body.update(result={"created": created, "existing": [], "items": []}, errors=errors)
        return httpx.Response(200, json=body)


def _folder(tmp_path: Path, n: int) -> list[bytes]:
    photos = [photo_bytes(100 + i, size=(64, 48)) for i in range(n)]
    for i, data in enumerate(photos):
        # Two folders hold the same file names: failures must still be reported by their own path.
        (tmp_path / f"d{i % 2}").mkdir(exist_ok=True)
        (tmp_path / f"d{i % 2}" / f"p{i // 2}.jpg").write_bytes(data)
    return photos


def test_upload_skips_indexed_files_chunks_and_maps_failures_to_paths(tmp_path: Path) -> None:
    photos = _folder(tmp_path, 9)
    api = FakeApi(indexed={content_id(photos[0]), content_id(photos[1])}, fail_names={"p3.jpg"})
    client = make_client(api)
    p = plan(client, "c", discover([tmp_path]))
    assert (p.already_indexed, len(p.pending)) == (2, 7)

    advanced: list[int] = []
    report = upload(client, "c", p.pending, chunk=3, concurrency=2, advance=advanced.append)
    assert sorted(len(names) for names in api.requests) == [1, 3, 3]
    assert sum(advanced) == 7 and len(advanced) > 3  # moved while jobs ran, not only once per chunk
    assert report.uploaded == 7 and report.created == 7 - len(report.failures)
    # p3.jpg exists in d0 and d1 (photos 6 and 7): both reported with their own folder.
    assert sorted(path.relative_to(tmp_path).as_posix() for path, _ in report.failures) == ["d0/p3.jpg", "d1/p3.jpg"]
    assert all(reason == "invalid_image: truncated" for _, reason in report.failures)


def test_an_api_error_stops_the_upload_and_is_raised(tmp_path: Path) -> None:
    _folder(tmp_path, 6)
    posts: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        posts.append(1)
        return httpx.Response(409, json={"error": "model_mismatch", "detail": "collection uses efficientnet-lite0"})

    found = discover([tmp_path])
    with pytest.raises(SimsearchError) as info:
        upload(make_client(handler), "c", found.images, chunk=1, concurrency=1)
    assert info.value.code == "model_mismatch"
    assert len(posts) < 6  # the remaining chunks were cancelled, not each sent to fail the same way


def test_the_client_package_imports_no_server_code() -> None:
    code = (
        "import sys, simsearch_client, simsearch_client.cli, simsearch_client.indexer; "
        "server = {'api', 'worker', 'shared', 'tensorflow', 'numpy'}; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in server))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
