"""Bad requests get a clear 4xx with {"error", "detail"}; health endpoints tell the truth."""

from __future__ import annotations

import socket

import httpx

from tests.images import photo_bytes
from tests.integration.client_helpers import index


def _error(resp: httpx.Response, status: int, code: str | None = None) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()
    # Validation errors also list each field (`fields`); every detail is one line of text.
    assert set(body) == ({"error", "detail", "fields"} if body["error"] == "validation_error" else {"error", "detail"})
    assert isinstance(body["detail"], str) and "\n" not in body["detail"], body
    if code:
        assert body["error"] == code
    return body


def test_health(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}


def test_unknown_job_and_collection(client: httpx.Client, collection: str) -> None:
    _error(client.get("/v1/jobs/does-not-exist"), 404, "job_not_found")
    _error(client.get(f"/v1/collections/{collection}"), 404, "collection_not_found")
    resp = client.post(f"/v1/collections/{collection}/search", files={"file": ("q.jpg", photo_bytes(1), "image/jpeg")})
    _error(resp, 404, "collection_not_found")
    _error(client.get(f"/v1/collections/{collection}/images/{'a' * 32}"), 404)


def test_validation_errors(client: httpx.Client, collection: str) -> None:
    _error(client.get("/v1/collections/bad name!"), 422, "validation_error")
    _error(client.get(f"/v1/collections/{collection}/images/not-an-id"), 422)
    _error(client.get("/v1/jobs/x", params={"wait": 31}), 422)
    _error(client.post(f"/v1/collections/{collection}/images", files={"x": (None, "1")}), 400, "no_files")
    _error(client.post(f"/v1/collections/{collection}/images", content=b"{}"), 415)
    files = [("files", ("a.jpg", photo_bytes(1), "image/jpeg"))]
    _error(
        client.post(f"/v1/collections/{collection}/images", files=files, data={"metadata": "{oops"}),
        422,
        "invalid_metadata",
    )
    _error(
        client.post(f"/v1/collections/{collection}/images", files=files, data={"metadata": "[1]"}),
        422,
        "invalid_metadata",
    )


def test_validation_errors_are_one_line_with_the_fields_listed(client: httpx.Client, collection: str) -> None:
    body = _error(client.get("/v1/jobs/x", params={"wait": 31}), 422, "validation_error")
    assert body["detail"].startswith("query.wait: Input should be less than or equal to")
    assert body["fields"] == [
        {"loc": ["query", "wait"], "msg": body["detail"].split(": ", 1)[1], "type": "less_than_equal"}
    ]
    both = _error(client.post(f"/v1/collections/{collection}/search", params={"k": 0, "min_similarity": 2}), 422)
    assert [f["loc"] for f in both["fields"]] == [["query", "k"], ["query", "min_similarity"]]
    assert (
        both["detail"].count("; ") == 1 and "query.k: " in both["detail"] and "query.min_similarity: " in both["detail"]
    )
    shards = _error(client.put(f"/v1/collections/{collection}", json={"shards": "many"}), 422, "validation_error")
    assert shards["detail"].startswith("shards: ") and shards["fields"][0]["loc"] == ["shards"]


def test_search_input_errors(client: httpx.Client, collection: str) -> None:
    index(client, collection, [("a.jpg", photo_bytes(11))])
    url = f"/v1/collections/{collection}/search"
    _error(client.post(url, files={"file": ("q.jpg", b"plain text", "image/jpeg")}), 400, "invalid_image")
    _error(client.post(url, content=b'{"image_id": ', headers={"content-type": "application/json"}), 422)
    _error(client.post(url, json={"image_id": "xyz"}), 422)
    _error(client.post(url, json={"image_id": "a" * 32}), 404, "image_not_found")
    _error(client.post(url, params={"k": 0}, json={"image_id": "a" * 32}), 422)
    _error(client.post(url, content=b"raw", headers={"content-type": "image/jpeg"}), 415)


def test_oversized_request_is_refused_before_it_is_read(client: httpx.Client, collection: str) -> None:
    # The test API runs with MAX_REQUEST_BYTES = 64 MiB. Announce 65 MiB, send 1 KiB: the answer
    # must come without the server waiting for the rest.
    url = httpx.URL(str(client.base_url))
    with socket.create_connection((url.host, url.port), timeout=5) as sock:
        head = (
            f"POST /v1/collections/{collection}/images HTTP/1.1\r\nHost: {url.host}\r\n"
            f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {65 * 1024 * 1024}\r\n\r\n"
        )
        sock.sendall(head.encode() + b"x" * 1024)
        chunks = []
        while chunk := sock.recv(65536):  # the server closes the connection after answering
            chunks.append(chunk)
        reply = b"".join(chunks).decode()
    assert reply.startswith("HTTP/1.1 413"), reply
    assert '"payload_too_large"' in reply

    def chunks():  # a well-formed multipart file part that never ends within the limit
        yield b'--zzz\r\nContent-Disposition: form-data; name="files"; filename="big.jpg"\r\n\r\n'
        block = b"\xff" * (1 << 20)
        for _ in range(80):
            yield block

    streamed = client.post(
        f"/v1/collections/{collection}/images",
        content=chunks(),
        headers={"content-type": "multipart/form-data; boundary=zzz"},
    )
    _error(streamed, 413, "payload_too_large")


def test_form_limits(client: httpx.Client, collection: str, redis_url: str, workdir) -> None:
    from tests.integration.services import start_api

    service, base = start_api(redis_url, workdir, MAX_FILES_PER_REQUEST="5")
    try:
        with httpx.Client(base_url=base, timeout=60) as small:
            files = [("files", (f"{i}.jpg", photo_bytes(i), "image/jpeg")) for i in range(6)]
            resp = small.post(f"/v1/collections/{collection}/images", files=files)
            assert resp.status_code in (400, 413) and set(resp.json()) == {"error", "detail"}
    finally:
        service.stop()
    fields = "&".join(f"f{i}=x" for i in range(10_000))
    boundary = "b0undary"
    body = "".join(f'--{boundary}\r\nContent-Disposition: form-data; name="f{i}"\r\n\r\nx\r\n' for i in range(10_000))
    body += f"--{boundary}--\r\n"
    resp = client.post(
        f"/v1/collections/{collection}/images",
        content=body.encode(),
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    _error(resp, 400)
    assert fields  # the urlencoded form of the same is refused as not multipart


def test_docs_pages_are_served_offline(client: httpx.Client) -> None:
    """/docs and /redoc load their scripts and styles from the API itself, not a CDN."""
    import re

    for page in ("/docs", "/redoc"):
        html = client.get(page)
        assert html.status_code == 200 and "text/html" in html.headers["content-type"]
        assets = re.findall(r'(?:src|href)="([^"]+)"', html.text)
        scripts = [a for a in assets if a.endswith((".js", ".css"))]
        assert scripts, html.text
        for asset in assets:
            assert not asset.startswith(("http://", "https://", "//")), f"{page} loads {asset} from elsewhere"
        for asset in scripts:
            resp = client.get(asset)
            assert resp.status_code == 200 and len(resp.content) > 10_000, asset
    assert client.get("/openapi.json").json()["info"]["title"] == "simsearch"
