"""Clustering jobs, cluster-restricted search, stale marking, and streaming exports."""

from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import httpx
import numpy as np
import redis

from shared import keys, vectors
from shared.imaging import content_id
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes, wait_job
from tests.integration.services import Service, data_client, is_cluster


def _stored_vectors(redis_client: redis.Redis, collection: str) -> dict[str, np.ndarray]:
    raw = redis_client.hgetall(keys.vectors(collection, 0))
    dim = int(redis_client.hget(keys.collection(collection), "dim"))
    return {k.decode(): vectors.decode(v, dim) for k, v in raw.items()}


def _cluster(client: httpx.Client, collection: str, body: dict | None = None) -> dict:
    resp = client.post(f"/v1/collections/{collection}/clusters", json=body)
    assert resp.status_code == 202, resp.text
    return wait_job(client, resp.json()["job_id"])


def test_cluster_job_pages_filter_and_stale(client: httpx.Client, collection: str) -> None:
    photos = [(f"p{i}.jpg", photo_bytes(14000 + i)) for i in range(30)]
    index(client, collection, photos)
    assert client.get(f"/v1/collections/{collection}/clusters").status_code == 404
    job = _cluster(client, collection, {"k": 3})
    assert job["type"] == "cluster" and job["status"] == "succeeded"
    result = job["result"]
    assert result["k"] == 3 and list(result["silhouette"]) == ["3"]
    assert sum(c["size"] for c in result["clusters"]) == 30

    view = client.get(f"/v1/collections/{collection}/clusters").json()
    assert view["stale"] is False and view["k"] == 3 and view["job_id"] == job["job_id"]
    members: dict[int, set[str]] = {}
    for c in view["clusters"]:
        first = client.get(f"/v1/collections/{collection}/clusters/{c['cluster']}/images", params={"limit": 2}).json()
        assert first["total"] == c["size"] and len(first["images"]) == min(2, c["size"])
        page = client.get(
            f"/v1/collections/{collection}/clusters/{c['cluster']}/images", params={"offset": 0, "limit": 100}
        ).json()
        members[c["cluster"]] = {img["image_id"] for img in page["images"]}
        assert c["medoid_image_id"] in members[c["cluster"]]
        assert page["images"][0]["image_id"] == c["medoid_image_id"]  # nearest the centroid first
    assert set().union(*members.values()) == {content_id(b) for _, b in photos}

    query = photos[0][1]
    own = next(c for c, ids in members.items() if content_id(query) in ids)
    other = next(c for c in members if c != own and members[c])
    unrestricted = search_bytes(client, collection, query, k=5)["result"]
    assert unrestricted["query_cluster"] == own
    restricted = search_bytes(client, collection, query, k=30, cluster=other)["result"]
    assert {m["image_id"] for m in restricted["matches"]} == members[other]
    missing = client.post(
        f"/v1/collections/{collection}/search", params={"cluster": 7}, files={"file": ("q.jpg", query, "image/jpeg")}
    )
    assert missing.status_code == 404 and missing.json()["error"] == "cluster_not_found"
    assert client.get(f"/v1/collections/{collection}/clusters/9/images").status_code == 404

    index(client, collection, [("late.jpg", photo_bytes(14100))])
    assert client.get(f"/v1/collections/{collection}/clusters").json()["stale"] is True
    again = _cluster(client, collection, {"k": 3})
    assert client.get(f"/v1/collections/{collection}/clusters").json()["stale"] is False
    client.delete(f"/v1/collections/{collection}/images/{content_id(photos[5][1])}")
    assert client.get(f"/v1/collections/{collection}/clusters").json()["stale"] is True
    assert again["result"]["image_count"] == 31


def test_cluster_request_validation(client: httpx.Client, collection: str) -> None:
    url = f"/v1/collections/{collection}/clusters"
    assert client.post(url, json={}).status_code == 404  # no such collection
    index(client, collection, [("a.jpg", photo_bytes(14200)), ("b.jpg", photo_bytes(14201))])
    for body in ({"k": 1}, {"k_min": 5, "k_max": 3}, {"k": "three"}, {"bogus": 1}):
        resp = client.post(url, json=body)
        assert resp.status_code == 422 and resp.json()["error"] == "validation_error", body
    job = _cluster(client, collection)
    assert job["status"] == "failed" and job["errors"][0]["error"] == "too_few_images"


def test_export_round_trips_the_stored_vectors(client: httpx.Client, collection: str, redis_client) -> None:
    photos = [(f"name,with comma {i}.jpg", photo_bytes(15000 + i)) for i in range(7)]
    index(client, collection, photos)
    stored = _stored_vectors(redis_client, collection)

    resp = client.get(f"/v1/collections/{collection}/export", params={"format": "csv"})
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(resp.text)))
    assert rows[0][:3] == ["image_id", "filename", "0"] and rows[0][-1] == "2047"
    assert len(rows) == 8
    for row in rows[1:]:
        np.testing.assert_array_equal(np.array(row[2:], dtype=np.float32), stored[row[0]])
    assert {row[1] for row in rows[1:]} == {name for name, _ in photos}

    resp = client.get(f"/v1/collections/{collection}/export", params={"format": "npy"})
    archive = zipfile.ZipFile(io.BytesIO(resp.content))
    matrix = np.load(io.BytesIO(archive.read("embeddings.npy")))
    ids = list(csv.DictReader(io.StringIO(archive.read("ids.csv").decode())))
    assert matrix.shape == (7, 2048) and matrix.dtype == np.float32
    for item in ids:
        np.testing.assert_array_equal(matrix[int(item["row"])], stored[item["image_id"]])
    assert client.get(f"/v1/collections/{collection}/export", params={"format": "xls"}).status_code == 422


def _peak_rss_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmHWM")))


def test_large_export_streams_with_flat_memory(
    client: httpx.Client, collection: str, redis_url: str, api_service: tuple[Service, str], workdir: Path
) -> None:
    from bench.search_latency import fill

    blobs = f"file://{workdir / 'blobs'}"
    fill(redis_url, blobs, f"{collection}-small", 300, 2048, "resnet50", is_cluster(redis_url))
    fill(redis_url, blobs, collection, 12_000, 2048, "resnet50", is_cluster(redis_url))  # 94 MiB of vectors
    data_client(redis_url).sadd(keys.COLLECTIONS, collection, f"{collection}-small")
    for fmt in ("npy", "csv"):  # first-use allocations of the process are not what is measured
        client.get(f"/v1/collections/{collection}-small/export", params={"format": fmt}).raise_for_status()
    before = _peak_rss_kib(api_service[0].proc.pid)
    for fmt, expected in (("npy", 12_000 * 2048 * 4), ("csv", 12_000 * 2048 * 9)):
        chunks, total = 0, 0
        with client.stream("GET", f"/v1/collections/{collection}/export", params={"format": fmt}) as resp:
            assert resp.status_code == 200
            for chunk in resp.iter_raw():
                chunks += 1
                total += len(chunk)
        assert chunks > 20 and total > expected, (fmt, chunks, total)
    growth_mib = (_peak_rss_kib(api_service[0].proc.pid) - before) / 1024
    print(f"API peak RSS grew {growth_mib:.1f} MiB while exporting 94 MiB of vectors (npy) and CSV")
    assert growth_mib < 32
