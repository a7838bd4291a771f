"""Metadata filters through the running service (issue 14): search by upload and by id, batch
search and image listing; 422s that name the field; and filters that follow the collection as
images are added and deleted (both workers' replicas catch up on metadata as on vectors)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.images import photo_bytes
from tests.integration.client_helpers import search_bytes, submit_images, wait_job

ROOT = Path(__file__).parents[2]
N = 300
RARE = {17, 141, 260}  # 1 % of the collection


def _meta(i: int) -> dict:
    label = ("cat", "dog", "panda")[i % 3]
    meta = {"label": label, "year": 2000 + i % 25, "tags": ["even" if i % 2 == 0 else "odd"]}
    if i in RARE:
        meta["rare"] = True
    if i % 10 == 0:
        meta["camera"] = {"iso": 100 * (1 + i % 4)}
    return meta


@pytest.fixture(scope="module")
def pets(api_url: str) -> tuple[str, dict[str, str]]:
    """A collection of 300 images with metadata; returns its name and image id -> file name."""
    name = "filters-pets"
    files = [(f"p{i}.jpg", photo_bytes(i, size=(96, 72))) for i in range(N)]
    metadata = json.dumps({f"p{i}.jpg": _meta(i) for i in range(N)})
    with httpx.Client(base_url=api_url, timeout=60) as client:
        job = wait_job(client, submit_images(client, name, files, metadata=metadata)["job_id"])
    assert job["status"] == "succeeded", job["errors"][:3]
    return name, {item["image_id"]: item["filename"] for item in job["result"]["items"]}


def _number(filename: str) -> int:
    return int(filename.removeprefix("p").removesuffix(".jpg"))


def test_label_filter_returns_only_cats_and_k_of_them(client: httpx.Client, pets) -> None:
    name, _ = pets
    query = photo_bytes(1, size=(96, 72))  # a dog's photo, searched among cats only
    resp = client.post(
        f"/v1/collections/{name}/search",
        params={"k": 25},
        files={"file": ("q.jpg", query, "image/jpeg")},
        data={"filter": json.dumps({"label": "cat"})},
    )
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    matches = job["result"]["matches"]
    assert len(matches) == 25
    assert all(_number(m["filename"]) % 3 == 0 for m in matches)
    assert job["result"]["filter_matches"] == N // 3
    # The same query unfiltered finds other labels too (the filter did something).
    plain = search_bytes(client, name, query, k=25)["result"]["matches"]
    assert any(_number(m["filename"]) % 3 != 0 for m in plain)


def test_a_one_percent_filter_still_returns_k(client: httpx.Client, pets) -> None:
    name, files = pets
    by_number = {_number(f): i for i, f in files.items()}
    resp = client.post(
        f"/v1/collections/{name}/search", params={"k": 3}, json={"image_id": by_number[5], "filter": {"rare": True}}
    )
    job = wait_job(client, resp.json()["job_id"])
    assert sorted(_number(m["filename"]) for m in job["result"]["matches"]) == sorted(RARE)
    # Ranges, $in, $exists, nested paths and $or, checked against the metadata itself.
    spec = {
        "$or": [{"year": {"$gte": 2020, "$lt": 2022}}, {"camera.iso": {"$in": [300]}}],
        "tags": "even",
        "rare": {"$exists": False},
    }
    expected = {
        i
        for i in range(N)
        if (2020 <= _meta(i)["year"] < 2022 or _meta(i).get("camera", {}).get("iso") == 300)
        and i % 2 == 0
        and i not in RARE
    }
    resp = client.post(
        f"/v1/collections/{name}/search", params={"k": 100}, json={"image_id": by_number[4], "filter": spec}
    )
    job = wait_job(client, resp.json()["job_id"])
    assert job["result"]["filter_matches"] == len(expected)
    assert {_number(m["filename"]) for m in job["result"]["matches"]} == expected - {4}


@pytest.mark.parametrize(
    ("body", "named"),
    [
        ({"filter": {"year": {"$gte": "2020", "$within": 3}}}, "filter.year.$within"),
        ({"filter": {"$or": [{"label": "cat"}, {"camera.iso": {"$gt": [1]}}]}}, "filter.$or[1].camera.iso.$gt"),
        ({"filter": {"label": None}}, "filter.label"),
    ],
)
def test_a_bad_filter_is_a_422_naming_the_field(client: httpx.Client, pets, body, named) -> None:
    name, files = pets
    resp = client.post(f"/v1/collections/{name}/search", json={"image_id": next(iter(files)), **body})
    assert resp.status_code == 422, resp.text
    assert resp.json()["error"] == "invalid_filter" and resp.json()["detail"].startswith(named + ":")


def test_bad_filters_in_forms_batches_and_listings(client: httpx.Client, pets) -> None:
    name, _ = pets
    upload = {"file": ("q.jpg", photo_bytes(1, size=(96, 72)), "image/jpeg")}
    resp = client.post(f"/v1/collections/{name}/search", files=upload, data={"filter": "{label: cat"})
    assert resp.status_code == 422 and "filter: not valid JSON" in resp.json()["detail"]
    resp = client.post(f"/v1/collections/{name}/search/batch", json={"all": True, "filter": {"year": {"$gt": True}}})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("filter.year.$gt:")
    resp = client.get(f"/v1/collections/{name}/images", params={"filter": '{"$nor": []}'})
    assert resp.status_code == 422 and resp.json()["detail"].startswith("filter.$nor:")


def test_listing_pages_through_the_matches(client: httpx.Client, pets) -> None:
    name, _ = pets
    spec = json.dumps({"label": "dog", "year": {"$lte": 2010}})
    everything = client.get(f"/v1/collections/{name}/images", params={"limit": 500}).json()["images"]
    # The unfiltered listing's order (the order indexed), kept to the matching images.
    expected = [n for r in everything if (n := _number(r["filename"])) % 3 == 1 and _meta(n)["year"] <= 2010]
    assert len(expected) == len([i for i in range(N) if i % 3 == 1 and _meta(i)["year"] <= 2010])
    seen = []
    for offset in range(0, len(expected) + 10, 10):
        page = client.get(f"/v1/collections/{name}/images", params={"filter": spec, "offset": offset, "limit": 10})
        assert page.status_code == 200, page.text
        assert page.json()["total"] == len(expected)
        seen += [_number(r["filename"]) for r in page.json()["images"]]
    assert seen == expected  # in the order added, each once
    for record in client.get(f"/v1/collections/{name}/images", params={"filter": spec}).json()["images"]:
        assert record["metadata"]["label"] == "dog"


def test_batch_search_with_a_filter(client: httpx.Client, pets) -> None:
    name, files = pets
    by_number = {_number(f): i for i, f in files.items()}
    queries = [by_number[n] for n in (0, 1, 2, 3)]
    body = {"image_ids": queries, "filter": {"label": "panda"}}
    resp = client.post(f"/v1/collections/{name}/search/batch", params={"k": 5}, json=body)
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    rows = client.get(f"/v1/jobs/{job['job_id']}/results").json()["results"]
    assert len(rows) == 4
    for row in rows:
        numbers = [_number(m["filename"]) for m in row["matches"]]
        assert len(numbers) == 5 and all(n % 3 == 2 for n in numbers)
        assert by_number.get(2) != row["image_id"] or 2 not in numbers  # a query is never its own match
    # Uploaded queries with the filter as a form field.
    parts = [("files", (f"q{n}.jpg", photo_bytes(n, size=(96, 72)), "image/jpeg")) for n in (7, 8)]
    resp = client.post(
        f"/v1/collections/{name}/search/batch", params={"k": 3}, files=parts, data={"filter": '{"rare": true}'}
    )
    job = wait_job(client, resp.json()["job_id"])
    rows = client.get(f"/v1/jobs/{job['job_id']}/results").json()["results"]
    assert [sorted(_number(m["filename"]) for m in row["matches"]) for row in rows] == [sorted(RARE)] * 2


def test_filters_follow_adds_and_deletes(client: httpx.Client, collection: str) -> None:
    """Both workers have answered a filtered search (their columns are loaded); then images are
    added and deleted, and every later search sees the change on whichever worker answers it."""
    first = [(f"a{i}.jpg", photo_bytes(1000 + i, size=(96, 72))) for i in range(12)]
    meta = {f"a{i}.jpg": {"kind": "old" if i < 8 else "other"} for i in range(12)}
    job = wait_job(client, submit_images(client, collection, first, metadata=json.dumps(meta))["job_id"])
    ids = {item["filename"]: item["image_id"] for item in job["result"]["items"]}
    query = photo_bytes(5000, size=(96, 72))

    def kinds(spec: dict) -> list[set[str]]:
        out = []
        for _ in range(4):  # several searches: both workers answer some
            resp = client.post(
                f"/v1/collections/{collection}/search",
                params={"k": 50},
                files={"file": ("q.jpg", query, "image/jpeg")},
                data={"filter": json.dumps(spec)},
            )
            out.append({m["filename"] for m in wait_job(client, resp.json()["job_id"])["result"]["matches"]})
        return out

    assert kinds({"kind": "old"}) == [{f"a{i}.jpg" for i in range(8)}] * 4
    more = [(f"b{i}.jpg", photo_bytes(2000 + i, size=(96, 72))) for i in range(5)]
    meta = {f"b{i}.jpg": {"kind": "old", "new": True} for i in range(5)}
    wait_job(client, submit_images(client, collection, more, metadata=json.dumps(meta))["job_id"])
    for name in ("a0.jpg", "a1.jpg"):
        assert client.delete(f"/v1/collections/{collection}/images/{ids[name]}").status_code == 204
    expected = {f"a{i}.jpg" for i in range(2, 8)} | {f"b{i}.jpg" for i in range(5)}
    assert kinds({"kind": "old"}) == [expected] * 4
    assert kinds({"new": {"$exists": True}}) == [{f"b{i}.jpg" for i in range(5)}] * 4


def test_cli_and_client_filter(api_url: str, pets) -> None:
    from simsearch_client import SimsearchClient

    name, files = pets
    by_number = {_number(f): i for i, f in files.items()}
    spec = '{"label": "cat", "year": {"$gte": 2010}}'
    cmd = [sys.executable, "-m", "simsearch_client", "search", "--id", by_number[0], "-c", name, "-k", "5"]
    done = subprocess.run(
        [*cmd, "--filter", spec, "--json", "--url", api_url], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    numbers = [_number(m["filename"]) for m in json.loads(done.stdout)["matches"]]
    assert len(numbers) == 5 and all(n % 3 == 0 and _meta(n)["year"] >= 2010 for n in numbers)
    bad = subprocess.run([*cmd, "--filter", "[1]", "--url", api_url], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 2 and "expected a JSON object" in bad.stderr
    refused = subprocess.run(
        [*cmd, "--filter", '{"year": {"$gt": []}}', "--url", api_url], capture_output=True, text=True, cwd=ROOT
    )
    assert refused.returncode != 0 and "filter.year.$gt" in refused.stderr
    with SimsearchClient(api_url) as client:
        page = client.images(name, limit=500, filter={"rare": True})
        assert sorted(_number(r["filename"]) for r in page["images"]) == sorted(RARE) and page["total"] == 3
        result = client.search_by_id(name, by_number[0], k=3, filter={"rare": True})
        assert sorted(_number(m["filename"]) for m in result["matches"]) == sorted(RARE)
