"""Bulk ingest against real servers: archives, URL lists from a loopback HTTP server, a SeaweedFS
bucket, search by URL, and signed completion callbacks (issue 13)."""

from __future__ import annotations

import hashlib
import hmac
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import wait_job
from tests.integration.seaweed import s3_client, start_seaweedfs
from tests.integration.services import small_stack

SECRET = "test-webhook-secret"
BUCKET = "imports"


class Site:
    """A loopback HTTP server: /img/<n>.jpg photos, /text.txt, /redirect-private, /hook receiver."""

    def __init__(self) -> None:
        self.hits: list[str] = []
        self.hooks: list[tuple[dict[str, str], bytes]] = []
        self.fail_next_hooks = 0
        site = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                site.hits.append(self.path)
                if self.path.startswith("/img/"):
                    body = photo_bytes(int(self.path.split("/")[-1].split(".")[0]))
                    self._send(200, body, "image/jpeg")
                elif self.path == "/text.txt":
                    self._send(200, b"hello, not an image", "text/plain")
                elif self.path == "/redirect-private":
                    self.send_response(302)
                    self.send_header("Location", "http://169.254.169.254/latest/meta-data/")
                    self.end_headers()
                else:
                    self._send(404, b"no", "text/plain")

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                site.hooks.append((dict(self.headers), body))
                if site.fail_next_hooks > 0:
                    site.fail_next_hooks -= 1
                    self._send(500, b"try again", "text/plain")
                else:
                    self._send(204, b"", "text/plain")

            def _send(self, code: int, body: bytes, kind: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    s = Site()
    yield s
    s.server.shutdown()


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory):
    service, endpoint = start_seaweedfs(tmp_path_factory.mktemp("weed"))
    yield endpoint
    service.stop()


def _stack(workdir: Path, **env: str):
    return small_stack(workdir, "imp", WEBHOOK_SECRET=SECRET, WEBHOOK_BACKOFF_S="0.5", **env)


@pytest.fixture(scope="module")
def open_api(tmp_path_factory: pytest.TempPathFactory, seaweed: str) -> Iterator[str]:
    """A stack whose workers may fetch from loopback (FETCH_ALLOW_PRIVATE=true)."""
    s3 = s3_client(seaweed)
    s3.create_bucket(Bucket=BUCKET)
    env = {
        "FETCH_ALLOW_PRIVATE": "true",
        "IMPORT_S3_BUCKETS": BUCKET,
        "IMPORT_S3_ENDPOINT_URL": seaweed,
        "IMPORT_S3_ACCESS_KEY_ID": "simsearch-test",
        "IMPORT_S3_SECRET_ACCESS_KEY": "simsearch-test-secret",
    }
    with _stack(tmp_path_factory.mktemp("imports-open"), **env) as base:
        yield base


@pytest.fixture(scope="module")
def closed_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The production default: workers refuse every non-public address."""
    with _stack(tmp_path_factory.mktemp("imports-closed")) as base:
        yield base


def _client(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=60)


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


def test_zip_images_are_indexed_and_bad_members_fail_with_reasons(open_api: str) -> None:
    members = {f"photos/{i:02d}.jpg": photo_bytes(1000 + i) for i in range(30)}
    members["notes.txt"] = b"not an image at all"
    members["data.bin"] = b"\x00\x01\x02" * 100
    members["../escape.jpg"] = photo_bytes(2000)
    with _client(open_api) as client:
        resp = client.post(
            "/v1/collections/zips/images", files=[("files", ("pack.zip", _zip(members), "application/zip"))]
        )
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "partial"
    assert job["progress"] == {"total": 33, "done": 33, "failed": 3}
    assert len(job["result"]["created"]) == 30
    reasons = {e["filename"]: e["error"] for e in job["errors"]}
    assert reasons["../escape.jpg"] == "unsafe_path"
    assert reasons["notes.txt"] == "invalid_image" and reasons["data.bin"] == "invalid_image"
    names = {i["filename"] for i in job["result"]["items"] if i["status"] == "created"}
    assert names == {f"photos/{i:02d}.jpg" for i in range(30)}  # the path inside the archive


def test_tar_gz_with_an_image_and_a_nested_archive(open_api: str) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in {"a.jpg": photo_bytes(3001), "inner.zip": _zip({"x.jpg": photo_bytes(3002)})}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    with _client(open_api) as client:
        resp = client.post(
            "/v1/collections/tars/images", files=[("files", ("pack.tar.gz", buf.getvalue(), "application/gzip"))]
        )
        job = wait_job(client, resp.json()["job_id"])
    assert job["progress"] == {"total": 2, "done": 2, "failed": 1}
    assert [e["error"] for e in job["errors"]] == ["nested_archive"]


def test_a_tar_with_undecodable_member_names_ends_with_the_good_member_indexed(open_api: str) -> None:
    """Names that are not UTF-8 (a refused `..` member, a symlink) once left the job `running`
    forever, the good image never indexed: every member must end, named legibly."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT, errors="surrogateescape") as tf:
        good = photo_bytes(3003)
        info = tarfile.TarInfo("good.jpg")
        info.size = len(good)
        tf.addfile(info, io.BytesIO(good))
        info = tarfile.TarInfo("../\udcff.jpg")
        info.size = len(good)
        tf.addfile(info, io.BytesIO(good))
        link = tarfile.TarInfo("link\udcfe.jpg")
        link.type = tarfile.SYMTYPE
        link.linkname = "good.jpg"
        tf.addfile(link)
    with _client(open_api) as client:
        resp = client.post(
            "/v1/collections/oddnames/images", files=[("files", ("odd.tar", buf.getvalue(), "application/x-tar"))]
        )
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"], timeout=60)
    assert job["status"] == "partial" and job["progress"] == {"total": 3, "done": 3, "failed": 2}, job
    assert sorted((e["filename"], e["error"]) for e in job["errors"]) == [
        ("../\ufffd.jpg", "unsafe_path"),
        ("link\ufffd.jpg", "not_a_file"),
    ]
    assert [i["filename"] for i in job["result"]["items"] if i["status"] == "created"] == ["good.jpg"]


def _worker_rss_mb(name: str) -> float:
    """The largest RSS among the worker's processes (the pool child does the expanding)."""
    best = 0.0
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "celery" in cmd and f"{name}@" in cmd:
            for p in [proc, *proc.children(recursive=True)]:
                best = max(best, p.memory_info().rss / 2**20)
    return best


def test_a_zip_bomb_is_refused_without_the_worker_growing(open_api: str) -> None:
    # One member expands to 1 GiB of zeros (~1 MB compressed); worker/ingest/archives.py refuses it from
    # its header, and caps every read besides (tests/unit/test_archives.py).
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("zeros.jpg", "w", force_zip64=True) as out:
            block = bytes(1 << 20)
            for _ in range(1024):
                out.write(block)
        zf.writestr("ok.jpg", photo_bytes(4000))
    bomb = buf.getvalue()
    assert len(bomb) < 8 << 20
    before = _worker_rss_mb("imp")
    with _client(open_api) as client:
        resp = client.post("/v1/collections/bombs/images", files=[("files", ("bomb.zip", bomb, "application/zip"))])
        job = wait_job(client, resp.json()["job_id"])
    after = _worker_rss_mb("imp")
    assert job["progress"]["failed"] >= 1
    errors = {e["filename"]: e["error"] for e in job["errors"]}
    assert errors["zeros.jpg"] in ("file_too_large", "suspicious_ratio", "archive_too_large")
    assert after - before < 200, (before, after)


def test_url_list_from_a_loopback_server(open_api: str, site: Site) -> None:
    urls = [f"{site.base}/img/{i}.jpg" for i in range(50)] + [f"{site.base}/missing.jpg", f"{site.base}/text.txt"]
    with _client(open_api) as client:
        resp = client.post("/v1/collections/urls/imports", json={"urls": urls})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "partial"
    assert job["progress"] == {"total": 52, "done": 52, "failed": 2}
    errors = {e["filename"]: e["error"] for e in job["errors"]}
    assert errors == {f"{site.base}/missing.jpg": "fetch_failed", f"{site.base}/text.txt": "invalid_image"}
    assert len(set(job["result"]["created"])) == 50


def test_url_file_with_metadata_rows_is_streamed_into_the_job(open_api: str, site: Site) -> None:
    lines = ["url,metadata"] + [f'{site.base}/img/{100 + i}.jpg,"{{""n"": {i}}}"' for i in range(70)]
    lines += ["", "# a comment", "ftp://example.com/x.jpg"]
    with _client(open_api) as client:
        resp = client.post(
            "/v1/collections/urlfile/imports", content="\n".join(lines).encode(), headers={"Content-Type": "text/csv"}
        )
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
        assert job["progress"] == {"total": 71, "done": 71, "failed": 1}
        assert [e["error"] for e in job["errors"]] == ["invalid_url"]
        first = job["result"]["created"][0]
        record = client.get(f"/v1/collections/urlfile/images/{first}").json()
    assert record["metadata"] == {"n": 0}
    assert record["filename"] == f"{site.base}/img/100.jpg"


def test_search_by_url(open_api: str, site: Site) -> None:
    with _client(open_api) as client:
        first = client.post(
            "/v1/collections/byurl/imports", json={"urls": [f"{site.base}/img/{i}.jpg" for i in range(5)]}
        )
        resp = client.post("/v1/collections/byurl/imports", json={"urls": [f"{site.base}/img/7.jpg"]})
        assert wait_job(client, first.json()["job_id"])["status"] == "succeeded"
        assert wait_job(client, resp.json()["job_id"])["status"] == "succeeded"
        # No pause: a search submitted after an import finished sees its images (read-your-writes).
        resp = client.post("/v1/collections/byurl/search", json={"url": f"{site.base}/img/7.jpg"})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded"
    assert job["result"]["matches"][0]["similarity"] > 0.999  # the same image, fetched again


def test_bucket_prefix_on_seaweedfs(open_api: str, seaweed: str) -> None:
    s3 = s3_client(seaweed)
    for i in range(12):
        s3.put_object(Bucket=BUCKET, Key=f"cams/{i:03d}.jpg", Body=photo_bytes(5000 + i))
    s3.put_object(Bucket=BUCKET, Key="cams/readme.md", Body=b"not listed: not an image name")
    s3.put_object(Bucket=BUCKET, Key="other/x.jpg", Body=photo_bytes(5999))
    with _client(open_api) as client:
        resp = client.post("/v1/collections/bucket/imports", json={"source": f"s3://{BUCKET}/cams/"})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
        refused = client.post("/v1/collections/bucket/imports", json={"source": "s3://someone-else/x"})
    assert job["status"] == "succeeded"
    assert job["progress"] == {"total": 12, "done": 12, "failed": 0}
    assert sorted(i["filename"] for i in job["result"]["items"]) == [f"cams/{i:03d}.jpg" for i in range(12)]
    assert refused.status_code == 403 and refused.json()["error"] == "bucket_not_allowed"


def test_webhook_is_signed_and_retried_after_a_500(open_api: str, site: Site) -> None:
    site.fail_next_hooks = 1
    before = len(site.hooks)
    with _client(open_api) as client:
        resp = client.post(
            "/v1/collections/hooks/imports",
            json={"urls": [f"{site.base}/img/300.jpg"], "callback_url": f"{site.base}/hook"},
        )
        job_id = resp.json()["job_id"]
        wait_job(client, job_id)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            job = client.get(f"/v1/jobs/{job_id}").json()
            if job["callback"]["status"] != "pending":
                break
            time.sleep(0.2)
    assert job["callback"]["status"] == "delivered" and job["callback"]["attempts"] == 2
    hooks = site.hooks[before:]
    assert len(hooks) == 2
    headers, body = hooks[-1]
    stamp = headers["X-Simsearch-Timestamp"]
    expected = hmac.new(SECRET.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert headers["X-Simsearch-Signature"] == f"sha256={expected}"
    assert json.loads(body)["job_id"] == job_id and json.loads(body)["status"] == "succeeded"


def test_private_addresses_are_refused_without_connecting(closed_api: str, site: Site) -> None:
    site.hits.clear()
    urls = [f"{site.base}/img/1.jpg", "http://169.254.169.254/latest/meta-data/"]
    with _client(closed_api) as client:
        job = wait_job(client, client.post("/v1/collections/closed/imports", json={"urls": urls}).json()["job_id"])
    assert job["status"] == "failed"
    assert {e["error"] for e in job["errors"]} == {"blocked_address"}
    assert site.hits == []  # no connection reached the loopback server


def _cli(base: str, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "simsearch_client", *args, "--url", base]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])


def test_cli_indexes_an_archive_and_imports_a_url_file(open_api: str, site: Site, tmp_path: Path) -> None:
    archive = tmp_path / "pack.zip"
    archive.write_bytes(_zip({f"{i}.jpg": photo_bytes(6000 + i) for i in range(5)} | {"bad.txt": b"x"}))
    done = _cli(open_api, "index", str(archive), "-c", "cli")
    assert done.returncode == 1, done.stderr  # one member failed
    assert "5 new" in done.stdout and "bad.txt: invalid_image" in done.stderr
    listing = tmp_path / "urls.txt"
    listing.write_text("\n".join(f"{site.base}/img/{6100 + i}.jpg" for i in range(4)))
    done = _cli(open_api, "import", "--urls", str(listing), "-c", "cli")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("succeeded: 4 new")
    with _client(open_api) as client:
        assert client.get("/v1/collections/cli").json()["image_count"] == 9
