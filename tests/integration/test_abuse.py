"""Abuse cases from an outside probe, against real API processes: bodies read before the key is
checked, unbounded metadata, /metrics naming every tenant's collections, shareable renditions,
rate-limit gaps (key guessing, unlimited endpoints, spoofed X-Forwarded-For) and 500s that are
really bad requests."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import socket
import threading
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from api.auth import hash_key
from api.gate import failure_key
from shared.imaging import content_id
from tests.images import photo_bytes
from tests.integration.client_helpers import index, wait_job
from tests.integration.services import Service, free_port, start_api

ALICE, OPS = "ssk_alice_abuse_key", "ssk_ops_abuse_key"
ALICE_ENTRY = {"name": "alice", "sha256": hash_key(ALICE), "collections": ["alice-*"]}
KEYS = json.dumps([ALICE_ENTRY, {"name": "ops", "sha256": hash_key(OPS), "collections": [], "scopes": ["metrics"]}])
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def keyed(redis_url: str, workdir: Path) -> Iterator[tuple[Service, str]]:
    """Keys on; 127.0.0.1 (the test client) counts as a trusted proxy, so X-Forwarded-For can
    stand for distinct clients."""
    service, base = start_api(redis_url, workdir, API_KEYS=KEYS, TRUSTED_PROXIES='["127.0.0.1"]')
    yield service, base
    service.stop()


@pytest.fixture(scope="module")
def limited(redis_url: str, workdir: Path) -> Iterator[str]:
    """Open (no keys), 5 requests a second per client address, no trusted proxy."""
    service, base = start_api(redis_url, workdir, RATE_LIMIT_PER_SECOND="5")
    yield base
    service.stop()


NAMES = ["=1+2.jpg", "+1.jpg", "-2.jpg", "@SUM(1).jpg", "plain.jpg"]


@pytest.fixture(scope="module")
def populated(api_url: str) -> dict:
    """An open collection of five images named like formulas, clustered into two."""
    name = f"t-abuse-{uuid.uuid4().hex[:8]}"
    photos = [(n, photo_bytes(31000 + i)) for i, n in enumerate(NAMES)]
    with httpx.Client(base_url=api_url, timeout=60) as client:
        index(client, name, photos)
        job = client.post(f"/v1/collections/{name}/clusters", json={"k": 2}).json()
        assert wait_job(client, job["job_id"])["status"] == "succeeded"
    return {"name": name, "ids": [content_id(p) for _, p in photos]}


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    # Validation errors also list each field (`fields`); every detail is one line of text.
    assert set(body) == ({"error", "detail", "fields"} if body["error"] == "validation_error" else {"error", "detail"})
    assert isinstance(body["detail"], str) and "\n" not in body["detail"], body
    if code:
        assert body["error"] == code, body
    return body


def _as(base: str, key: str | None = None, forwarded_for: str | None = None) -> httpx.Client:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    if forwarded_for:
        headers["x-forwarded-for"] = forwarded_for
    return httpx.Client(base_url=base, headers=headers, timeout=60)


# -- A: the key is checked before any body is read ------------------------------------------------
def _memory_kb(pid: int) -> dict[str, int]:
    lines = (line.partition(":") for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    return {name: int(value.split()[0]) for name, _, value in lines if name in ("VmRSS", "VmHWM")}


def _post_raw(base: str, path: str, body: bytes) -> str:
    """POST while a second thread pushes the body, as an attacker would; the reply's status line."""
    url = httpx.URL(base)
    sock = socket.create_connection((url.host, url.port), timeout=120)
    head = f"POST {path} HTTP/1.1\r\nHost: {url.host}\r\nContent-Type: application/json\r\n"
    head += f"Content-Length: {len(body)}\r\n\r\n"

    def push() -> None:
        try:
            sock.sendall(head.encode())
            view = memoryview(body)
            for start in range(0, len(body), MiB):
                sock.sendall(view[start : start + MiB])
        except OSError:
            pass  # the server answered and closed without reading the rest: the point

    sender = threading.Thread(target=push, daemon=True)
    sender.start()
    reply = b""
    try:
        while b"\r\n" not in reply and (chunk := sock.recv(65536)):
            reply += chunk
    finally:
        with contextlib.suppress(OSError):  # already reset by the server: nothing to shut down
            sock.shutdown(socket.SHUT_RDWR)
        sender.join(120)
        sock.close()
    return reply.split(b"\r\n", 1)[0].decode()


def test_unauthenticated_json_is_refused_before_it_is_parsed(keyed: tuple[Service, str]) -> None:
    service, base = keyed
    pid = service.proc.pid
    body = b"[" + b"{}," * (32 * MiB // 3 - 1) + b"{}]"
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # peak RSS := current RSS
    before = _memory_kb(pid)
    status = _post_raw(base, "/v1/collections/alice-x/clusters", body)
    after = _memory_kb(pid)
    grown_mb = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(f"\nAPI RSS before {before['VmRSS'] / 1024:.1f} MB, peak after {after['VmHWM'] / 1024:.1f} MB")
    assert status.startswith("HTTP/1.1 401"), status
    assert grown_mb < 50, f"peak RSS grew by {grown_mb:.0f} MB"
    assert httpx.get(base + "/healthz").status_code == 200


def test_small_json_bodies_have_small_caps(keyed: tuple[Service, str]) -> None:
    _, base = keyed
    alice = _as(base, ALICE)
    padded = json.dumps({"k": 2, "pad": "x" * 64 * 1024})
    url = "/v1/collections/alice-nothing"
    headers = {"content-type": "application/json"}
    _error(alice.post(f"{url}/clusters", content=padded, headers=headers), 413, "payload_too_large")
    _error(alice.post(f"{url}/search", content=padded, headers=headers), 413, "payload_too_large")

    def chunked():  # no Content-Length: counted while read
        yield b'{"k": 2, "pad": "'
        for _ in range(64):
            yield b"x" * 1024
        yield b'"}'

    _error(alice.post(f"{url}/clusters", content=chunked(), headers=headers), 413, "payload_too_large")
    # A lookup of the most ids allowed still fits; a megabyte does not.
    ids = [uuid.uuid4().hex for _ in range(10_000)]
    resp = alice.post(f"{url}/images/lookup", content=json.dumps({"image_ids": ids}, indent=1), headers=headers)
    assert resp.status_code == 200 and resp.json() == {"existing": []}, resp.text
    big = json.dumps({"image_ids": ids * 3})
    _error(alice.post(f"{url}/images/lookup", content=big, headers=headers), 413, "payload_too_large")


# -- B: metadata is bounded ------------------------------------------------------------------------
def _nested(depth: int) -> str:
    return '{"a.jpg": ' + '{"x": ' * depth + "1" + "}" * depth + "}"


def _upload(client: httpx.Client, collection: str, metadata: str, files: int = 1, name: str = "a.jpg"):
    parts = [("files", (name, photo_bytes(32000), "image/jpeg")) for _ in range(files)]
    return client.post(f"/v1/collections/{collection}/images", files=parts, data={"metadata": metadata})


def test_deep_metadata_is_422(client: httpx.Client, collection: str) -> None:
    _error(_upload(client, collection, _nested(210)), 422, "invalid_metadata")  # was 202, then broke the worker
    _error(_upload(client, collection, _nested(5000)), 422, "invalid_metadata")  # was 500
    assert client.get(f"/v1/collections/{collection}").status_code == 404  # nothing was queued


def test_oversized_metadata_is_413(client: httpx.Client, collection: str) -> None:
    per_image = json.dumps({"a.jpg": {"v": "x" * 20_000}})
    _error(_upload(client, collection, per_image), 413, "metadata_too_large")
    # 15 KB is fine for one image, but it is stored once per file of that name: 100 of them, 1.5 MB.
    copied = json.dumps({"same.jpg": {"v": "x" * 15_000}})
    _error(_upload(client, collection, copied, files=100, name="same.jpg"), 413, "metadata_too_large")
    whole = json.dumps({f"{i}.jpg": {"v": "x" * 10_000} for i in range(120)})  # 1.2 MB in the field
    _error(_upload(client, collection, whole), 413, "metadata_too_large")
    ok = _upload(client, collection, json.dumps({"a.jpg": {"tags": ["cat"], "deep": {"a": {"b": {"c": 1}}}}}))
    assert ok.status_code == 202, ok.text
    wait_job(client, ok.json()["job_id"])
    image = client.get(f"/v1/collections/{collection}/images/{content_id(photo_bytes(32000))}").json()
    assert image["metadata"] == {"tags": ["cat"], "deep": {"a": {"b": {"c": 1}}}}


# -- C: /metrics needs a metrics key when keys are on ------------------------------------------------
def test_metrics_need_a_key_with_the_metrics_scope(keyed: tuple[Service, str], client: httpx.Client) -> None:
    _, base = keyed
    _error(_as(base).get("/metrics"), 401, "unauthorized")
    _error(_as(base, ALICE).get("/metrics"), 403, "forbidden")
    resp = _as(base, OPS).get("/metrics")
    assert resp.status_code == 200 and "simsearch_collection_images" in resp.text
    assert _as(base, OPS).get("/v1/collections").json() == []  # the scope grants no collection
    assert client.get("/metrics").status_code == 200  # without keys, metrics stay open


# -- D: renditions are not for shared caches -----------------------------------------------------------
def test_image_content_is_private_and_not_sniffed(client: httpx.Client, populated: dict) -> None:
    resp = client.get(f"/v1/collections/{populated['name']}/images/{populated['ids'][0]}/content")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    assert resp.headers["cache-control"] == "private, max-age=3600"
    assert resp.headers["x-content-type-options"] == "nosniff"


# -- E: rate-limit gaps ----------------------------------------------------------------------------------
def test_failed_authentication_is_rate_limited(keyed: tuple[Service, str], redis_client: redis.Redis) -> None:
    _, base = keyed
    guesser, neighbour = "203.0.113.77", "203.0.113.78"
    try:
        statuses = [_as(base, f"ssk_guess_{i}", forwarded_for=guesser).get("/v1/collections") for i in range(20)]
        assert [r.status_code for r in statuses] == [401] * 20
        refused = _error(_as(base, "ssk_guess_21", forwarded_for=guesser).get("/v1/collections"), 429)
        assert refused["error"] == "rate_limited"
        resp = _as(base, "ssk_guess_22", forwarded_for=guesser).get("/v1/collections")
        assert resp.status_code == 429 and 1 <= int(resp.headers["retry-after"]) <= 60
        # Even the right key is refused from that address (or guessing would go on for free) ...
        assert _as(base, ALICE, forwarded_for=guesser).get("/v1/collections").status_code == 429
        assert _as(base, forwarded_for=guesser).get("/metrics").status_code == 429
        # ... but not from another one.
        assert _as(base, ALICE, forwarded_for=neighbour).get("/v1/collections").status_code == 200
        assert 0 < redis_client.ttl(failure_key(guesser)) <= 60
    finally:
        redis_client.delete(failure_key(guesser), failure_key(neighbour))


def test_spoofed_forwarded_for_gets_no_fresh_budget(limited: str) -> None:
    with _as(limited) as client:
        spoofed = [{"x-forwarded-for": f"198.51.100.{i}"} for i in range(24)]
        statuses = [client.get("/v1/collections", headers=headers).status_code for headers in spoofed]
    # 24 requests in well under 2 s from one peer: at most 5 per one-second window pass.
    assert statuses.count(200) <= 15 and statuses.count(429) >= 9, statuses


def test_docs_metrics_and_static_files_are_rate_limited(limited: str) -> None:
    paths = ["/openapi.json", "/docs", "/metrics", "/", "/app.js"]
    seen: dict[str, list[int]] = {p: [] for p in paths}
    with _as(limited) as client:
        for i in range(30):
            seen[paths[i % len(paths)]].append(client.get(paths[i % len(paths)]).status_code)
    for path, statuses in seen.items():
        assert set(statuses) <= {200, 429} and 429 in statuses, (path, statuses)
    assert httpx.get(limited + "/healthz").status_code == 200  # probes are never limited


# -- F: bad requests are 4xx, not 500 ----------------------------------------------------------------------
def test_huge_offsets_are_422(client: httpx.Client, populated: dict) -> None:
    name = populated["name"]
    huge = {"offset": "99999999999999999999"}
    _error(client.get(f"/v1/collections/{name}/images", params=huge), 422, "validation_error")
    _error(client.get(f"/v1/collections/{name}/clusters/0/images", params=huge), 422, "validation_error")
    page = client.get(f"/v1/collections/{name}/images", params={"offset": 10**9}).json()
    assert page["total"] == 5 and page["images"] == []


def _multipart(boundary: str, name: str, filename: str, data: bytes) -> bytes:
    head = f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'
    return head.encode() + b"Content-Type: image/jpeg\r\n\r\n" + data + f"\r\n--{boundary}--\r\n".encode()


def test_media_types_are_case_insensitive(client: httpx.Client, populated: dict) -> None:
    name, mixed = populated["name"], "Multipart/Form-Data; boundary=XyZ"
    requests = [
        ("images", mixed, _multipart("XyZ", "files", "again.jpg", photo_bytes(31005))),
        ("search", mixed, _multipart("XyZ", "file", "q.jpg", photo_bytes(31001))),
        ("search", "Application/JSON", json.dumps({"image_id": populated["ids"][1]}).encode()),
    ]
    for route, content_type, body in requests:
        resp = client.post(f"/v1/collections/{name}/{route}", content=body, headers={"content-type": content_type})
        assert resp.status_code == 202, resp.text  # was 415
        assert wait_job(client, resp.json()["job_id"])["status"] == "succeeded"


def test_exported_file_names_cannot_be_formulas(client: httpx.Client, populated: dict) -> None:
    name = populated["name"]
    rows = list(csv.reader(io.StringIO(client.get(f"/v1/collections/{name}/export").text)))
    names = {row[1] for row in rows[1:]}
    assert {"'=1+2.jpg", "'+1.jpg", "'-2.jpg", "'@SUM(1).jpg", "plain.jpg"} <= names
    assert all(float(v) == float(v) for row in rows[1:] for v in row[2:])  # vectors stay numbers
    npy = client.get(f"/v1/collections/{name}/export", params={"format": "npy"})
    ids_csv = zipfile.ZipFile(io.BytesIO(npy.content)).read("ids.csv").decode()
    listed = {row[2] for row in csv.reader(io.StringIO(ids_csv))}
    assert "'=1+2.jpg" in listed and "=1+2.jpg" not in listed


def test_malformed_job_ids_are_404_without_touching_redis(workdir: Path) -> None:
    # An API whose Redis is down, limits off: only what needs Redis can fail with 503.
    service, base = start_api(f"redis://127.0.0.1:{free_port()}/0", workdir, RATE_LIMIT_PER_SECOND="0")
    try:
        for job_id in ("not-a-job", "A" * 32, "a" * 31, "a" * 32 + "%0A"):
            _error(httpx.get(f"{base}/v1/jobs/{job_id}", timeout=30), 404, "job_not_found")
        _error(httpx.get(f"{base}/v1/jobs/{'a' * 32}", timeout=30), 503, "redis_unavailable")
    finally:
        service.stop()
