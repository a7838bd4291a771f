"""Sharded collections on real workers: two workers serving one shard each answer exactly as one
unsharded collection does; each holds only its shard; a shard without a live worker makes
searches end `partial` within SHARD_TIMEOUT_S (naming it), and a new worker for it restores
complete answers; deletes and read-your-writes hold across shards."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared import keys, vectors
from tests.images import photo_bytes
from tests.integration.client_helpers import index, search_bytes, search_id, wait_job
from tests.integration.services import ON_CLUSTER, Service, data_client, data_store, start_api, start_worker

SHARD_TIMEOUT_S = 4
IMAGES = 300
QUERIES = 30
# Both collections must hold the same vectors, whichever worker embedded a chunk: TensorFlow float32
# is deterministic across processes (OpenVINO's auto precision is chosen per process, by timing).
ENV = {
    "SHARD_TIMEOUT_S": str(SHARD_TIMEOUT_S),
    "EMBEDDING_MODEL": "efficientnet-lite0",
    "INFERENCE_BACKEND": "tensorflow",
    # Real (offline) weights: random ones map every photo to nearly the same vector (similarities
    # all ~1.0), where the order is rounding noise.
    "EMBEDDING_WEIGHTS": "imagenet",
    # These tests compare shard merges with one index of everything, match for match; a calibrated
    # default threshold depends on how the collection is split (test_no_match.py covers it).
    "NO_MATCH_CALIBRATION": "false",
}


class Stack:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self._store = data_store(workdir, ON_CLUSTER)  # one Redis, or a Redis Cluster
        self.url = self._store.__enter__()
        self.workers: dict[str, Service] = {}
        self.api, self.base = start_api(self.url, workdir, **ENV)

    def worker(self, name: str, shards: str, **extra: str) -> Service:
        self.workers[name] = start_worker(self.url, self.workdir, name, WORKER_SHARDS=shards, **{**ENV, **extra})
        return self.workers[name]

    def stop(self) -> None:
        for service in [*self.workers.values(), self.api]:
            service.stop()
        self._store.__exit__(None, None, None)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    built = Stack(tmp_path_factory.mktemp("shards"))
    try:
        built.worker("shard0", "0")
        built.worker("shard1", "1")
        yield built
    finally:
        built.stop()


@pytest.fixture(scope="module")
def client(stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=stack.base, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def photos() -> list[tuple[str, bytes]]:
    return [(f"p{i}.jpg", photo_bytes(i)) for i in range(IMAGES)]


@pytest.fixture(scope="module")
def indexed(client: httpx.Client, photos: list[tuple[str, bytes]]) -> list[str]:
    assert client.put("/v1/collections/sharded", json={"shards": 2}).status_code == 201
    ids = []
    for name in ("sharded", "flat"):
        job = index(client, name, photos)
        assert job["status"] == "succeeded", job["errors"][:3]
        ids = job["result"]["created"]
    return ids


def matches(job: dict) -> list[tuple[str, float]]:
    return [(m["image_id"], m["similarity"]) for m in job["result"]["matches"]]


def test_shards_are_fixed_when_the_collection_is_created(client: httpx.Client, indexed: list[str]) -> None:
    assert client.put("/v1/collections/sharded", json={"shards": 2}).status_code == 200
    refused = client.put("/v1/collections/sharded", json={"shards": 3})
    assert refused.status_code == 409 and refused.json()["error"] == "shards_fixed"
    # A collection created by its first images (before shards, or with DEFAULT_SHARDS=1) stays whole.
    refused = client.put("/v1/collections/flat", json={"shards": 2})
    assert refused.status_code == 409 and client.get("/v1/collections/flat").json()["shards"] == 1
    assert client.put("/v1/collections/other", json={"shards": 0}).status_code == 422
    info = client.get("/v1/collections/sharded").json()
    assert info["shards"] == 2 and info["image_count"] == IMAGES
    assert sum(info["shard_counts"]) == IMAGES and min(info["shard_counts"]) > 0
    assert client.get("/v1/collections/flat").json()["shards"] == 1


def exact_top10(stack: Stack, collection: str, image: str) -> list[tuple[str, float]]:
    """Exact float32 cosine over the collection's stored vectors, computed here."""
    r = data_client(stack.url)
    raw = {
        k: v
        for s in range(int(r.hget(keys.collection(collection), "shards") or 1))
        for k, v in r.hgetall(keys.vectors(collection, s)).items()
    }
    ids = sorted(k.decode() for k in raw)
    matrix = vectors.decode_many([raw[i.encode()] for i in ids], len(raw[ids[0].encode()]) // 2)
    scores = matrix @ matrix[ids.index(image)]
    order = sorted((r for r in range(len(ids)) if ids[r] != image), key=lambda r: (-scores[r], ids[r]))
    return [(ids[r], float(scores[r])) for r in order[:10]]


def same_ranking(got: list[tuple[str, float]], want: list[tuple[str, float]], tol: float = 2e-6) -> bool:
    """Same similarities in the same order, and the same ids wherever neighbours are not tied
    to within float32 rounding (two processes may round a dot product differently)."""
    if len(got) != len(want) or any(abs(a - b) > tol for (_, a), (_, b) in zip(got, want, strict=True)):
        return False
    sims = [s for _, s in want]
    return all(
        g == w
        for j, ((g, _), (w, _)) in enumerate(zip(got, want, strict=True))
        if all(abs(sims[j] - sims[o]) > tol for o in (j - 1, j + 1) if 0 <= o < len(sims))
    )


def test_two_shards_answer_like_one(client: httpx.Client, indexed: list[str], stack: Stack) -> None:
    for image in indexed[:QUERIES]:
        sharded, flat = search_id(client, "sharded", image), search_id(client, "flat", image)
        assert sharded["status"] == flat["status"] == "succeeded"
        got, want = matches(sharded), matches(flat)
        assert same_ranking(got, exact_top10(stack, "sharded", image))
        assert same_ranking(got, want)  # the unsharded collection of the same photos
        assert sharded["result"]["shards"] == 2 and sharded["result"]["missing_shards"] == []
        assert sharded["result"]["collection_size"] == IMAGES


def test_each_worker_holds_only_its_shard(client: httpx.Client, indexed: list[str], stack: Stack) -> None:
    counts = client.get("/v1/collections/sharded").json()["shard_counts"]
    for shard, name in enumerate(("shard0", "shard1")):
        log = stack.workers[name].log.read_text()
        held = [int(n) for n in re.findall(rf"replica of sharded shard {shard}/2: (\d+) vectors", log)]
        assert held and held[0] == counts[shard]
        assert f"replica of sharded shard {1 - shard}/2" not in log  # never the other shard
        assert "replica of sharded:" not in log  # never the whole collection


def test_deletes_and_new_images_are_seen_on_every_shard(
    client: httpx.Client, indexed: list[str], photos: list[tuple[str, bytes]]
) -> None:
    first = search_id(client, "sharded", indexed[0])
    gone = matches(first)[0][0]
    assert client.delete(f"/v1/collections/sharded/images/{gone}").status_code == 204
    after = search_id(client, "sharded", indexed[0])
    assert gone not in [i for i, _ in matches(after)]
    new = photo_bytes(10_000)
    created = index(client, "sharded", [("new.jpg", new)])["result"]["created"]
    found = search_bytes(client, "sharded", new)
    assert matches(found)[0][0] == created[0] and matches(found)[0][1] > 0.999


def test_clustering_and_export_cover_every_shard(client: httpx.Client, indexed: list[str]) -> None:
    total = client.get("/v1/collections/sharded").json()["image_count"]
    job = wait_job(client, client.post("/v1/collections/sharded/clusters", json={"k": 3}).json()["job_id"])
    assert job["status"] == "succeeded" and job["result"]["image_count"] == total
    assert sum(c["size"] for c in job["result"]["clusters"]) == total
    rows = client.get("/v1/collections/sharded/export", params={"format": "csv"}).text.strip().splitlines()
    assert len(rows) == total + 1  # a header, then every image of both shards
    # The cluster filter applies on every shard: all matches are members of the cluster asked for.
    members = set()
    for page in range(0, total, 500):
        got = client.get("/v1/collections/sharded/clusters/0/images", params={"offset": page, "limit": 500}).json()
        members |= {i["image_id"] for i in got["images"]}
    found = search_id(client, "sharded", indexed[2], cluster=0)
    assert found["status"] == "succeeded" and {m["image_id"] for m in found["result"]["matches"]} <= members


def batch(client: httpx.Client, collection: str, **kwargs) -> tuple[dict, list[dict]]:
    resp = client.post(f"/v1/collections/{collection}/search/batch", **kwargs)
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    rows = client.get(f"/v1/jobs/{job['job_id']}/results", params={"limit": 1000}).json()["results"]
    return job, rows


def test_batch_search_on_shards_answers_like_exact_search(
    client: httpx.Client, indexed: list[str], stack: Stack
) -> None:
    queries = indexed[40:60]
    job, rows = batch(client, "sharded", params={"k": 10}, json={"image_ids": queries})
    assert job["status"] == "succeeded", job
    assert job["progress"] == {"total": 20, "done": 20, "failed": 0}
    for image, row in zip(queries, rows, strict=True):
        assert row["image_id"] == image and "missing_shards" not in row
        got = [(m["image_id"], m["similarity"]) for m in row["matches"]]
        assert same_ranking(got, exact_top10(stack, "sharded", image))  # itself excluded, both shards merged
    # Uploaded queries: embedded once, answered by both shards; each finds its own photo first.
    files = [("files", (f"q{i}.jpg", photo_bytes(i), "image/jpeg")) for i in range(3)]
    job, rows = batch(client, "sharded", params={"k": 3}, files=files)
    assert job["status"] == "succeeded", job
    assert [row["query"] for row in rows] == ["q0.jpg", "q1.jpg", "q2.jpg"]
    for i, row in enumerate(rows):
        assert row["matches"][0]["filename"] == f"p{i}.jpg" and row["matches"][0]["similarity"] > 0.999
    # Nothing of the fan-out is left behind.
    assert not list(data_client(stack.url).scan_iter(f"ss:job:{job['job_id']}:batch*"))


def test_a_shard_without_a_worker_ends_partial_then_recovers(
    client: httpx.Client, indexed: list[str], stack: Stack
) -> None:
    os.killpg(stack.workers["shard1"].proc.pid, signal.SIGKILL)
    stack.workers["shard1"].proc.wait(10)
    started = time.monotonic()
    job = search_id(client, "sharded", indexed[1])
    took = time.monotonic() - started
    assert job["status"] == "partial" and job["result"]["missing_shards"] == [1]
    assert not data_client(stack.url).exists(keys.job_query(job["job_id"]), keys.job_shards(job["job_id"]))
    assert took < SHARD_TIMEOUT_S + 5
    assert "shards [1] did not answer" in job["result"]["message"]
    # A batch search too: partial after the shard timeout, each row naming the missing shard.
    started = time.monotonic()
    batched, rows = batch(client, "sharded", params={"k": 5}, json={"image_ids": indexed[2:5]})
    assert batched["status"] == "partial" and batched["result"]["chunks_missing_shards"] == 1, batched
    assert time.monotonic() - started < SHARD_TIMEOUT_S + 10
    assert [r["missing_shards"] for r in rows] == [[1]] * 3
    assert all(int(m["image_id"][:8], 16) % 2 == 0 for r in rows for m in r["matches"])  # shard 0's only
    counts = client.get("/v1/collections/sharded").json()["shard_counts"]
    assert job["result"]["collection_size"] == counts[0]
    assert all(int(i[:8], 16) % 2 == 0 for i, _ in matches(job))  # shard 0's images only
    # The replacement is a search-only worker: no model, just shard 1's replica.
    replacement = stack.worker("shard1b", "1", WORKER_EMBEDS="false")
    job = search_id(client, "sharded", indexed[1])
    assert job["status"] == "succeeded" and job["result"]["missing_shards"] == []
    log = replacement.log.read_text()
    assert "model=none (search only" in log and "replica of sharded shard 1/2" in log
    # An uploaded query still works: a worker with the model embeds it, the shards answer.
    assert search_bytes(client, "sharded", photo_bytes(3))["status"] == "succeeded"
    flat = search_id(client, "flat", indexed[1])
    assert [i for i, _ in matches(job)] == [i for i, _ in matches(flat) if i in {j for j, _ in matches(job)}]


def test_a_filter_applies_on_every_shard(client: httpx.Client, indexed: list[str]) -> None:
    assert client.put("/v1/collections/sharded-meta", json={"shards": 2}).status_code == 201
    files = [(f"m{i}.jpg", photo_bytes(500 + i)) for i in range(40)]
    metadata = json.dumps({f"m{i}.jpg": {"even": i % 2 == 0, "n": i} for i in range(40)})
    resp = client.post(
        "/v1/collections/sharded-meta/images", files=[("files", f) for f in files], data={"metadata": metadata}
    )
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded", job["errors"][:3]
    counts = client.get("/v1/collections/sharded-meta").json()["shard_counts"]
    assert min(counts) > 0
    spec = {"even": True, "n": {"$lt": 30}}
    found = client.post(
        "/v1/collections/sharded-meta/search",
        params={"k": 40},
        files={"file": ("q.jpg", photo_bytes(9), "image/jpeg")},
        data={"filter": json.dumps(spec)},
    )
    job = wait_job(client, found.json()["job_id"])
    assert job["status"] == "succeeded" and job["result"]["shards"] == 2
    names = sorted(m["filename"] for m in job["result"]["matches"])
    assert names == sorted(f"m{i}.jpg" for i in range(0, 30, 2))
    assert job["result"]["filter_matches"] == 15  # the shards' counts, summed
    sims = [m["similarity"] for m in job["result"]["matches"]]
    assert sims == sorted(sims, reverse=True)
    # The same filter in a batch search over both shards.
    ids = {m["filename"]: m["image_id"] for m in job["result"]["matches"]}
    job, rows = batch(client, "sharded-meta", params={"k": 40}, json={"image_ids": [ids["m0.jpg"]], "filter": spec})
    assert job["status"] == "succeeded", job
    assert sorted(m["filename"] for m in rows[0]["matches"]) == sorted(f"m{i}.jpg" for i in range(2, 30, 2))
