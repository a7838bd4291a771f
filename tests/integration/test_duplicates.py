"""Near-duplicate groups through the service (issue 14): real Lite0 weights, 300 generated photos
with 5 resized and re-encoded copies planted among them."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.images import photo_bytes, reencode
from tests.integration.client_helpers import index, wait_job
from tests.integration.services import small_stack

# A direct search for each of 305 rows sends more than the default 200 requests a second.
ENV = {"EMBEDDING_MODEL": "efficientnet-lite0", "EMBEDDING_WEIGHTS": "imagenet", "RATE_LIMIT_PER_SECOND": "0"}
ENV["MAX_BATCH_MATCHES"] = "1000"  # the smallest budget: 305 images x k=3 fit, x k=4 do not
PLANTED = [3, 50, 120, 200, 299]


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with small_stack(tmp_path_factory.mktemp("duplicates"), "dup", **ENV) as api_base:
        yield api_base


@pytest.fixture(scope="module")
def ids(base: str) -> dict[str, str]:
    """The 305 images of collection `dups`: file name -> image id."""
    originals = [(f"p{i}.jpg", photo_bytes(i)) for i in range(300)]
    copies = [(f"copy-of-p{i}.jpg", reencode(originals[i][1], scale=0.9, quality=85)) for i in PLANTED]
    with httpx.Client(base_url=base, timeout=60) as client:
        job = index(client, "dups", originals + copies)
    assert job["status"] == "succeeded", job["errors"][:3]
    return {item["filename"]: item["image_id"] for item in job["result"]["items"]}


def test_planted_copies_come_back_as_five_pairs(base: str, ids: dict[str, str]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        bad = client.post("/v1/collections/dups/duplicates", json={"min_similarity": 2})
        assert bad.status_code == 422 and bad.json()["error"] == "validation_error"
        resp = client.post("/v1/collections/dups/duplicates", json={"min_similarity": 0.95})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    result = job["result"]
    assert result["images"] == 305
    pairs = sorted(sorted(m["filename"] for m in g["members"]) for g in result["groups"])
    assert pairs == sorted(sorted([f"p{i}.jpg", f"copy-of-p{i}.jpg"]) for i in PLANTED)
    for group in result["groups"]:
        assert group["size"] == 2 and group["members"][0]["similarity"] == 1.0
        assert 0.95 <= group["members"][1]["similarity"] < 1.0


def test_cli_lists_the_groups(base: str, ids: dict[str, str]) -> None:
    cmd = [sys.executable, "-m", "simsearch_client", "duplicates", "dups", "--min-similarity", "0.95", "--url", base]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("5 groups holding 10 of 305 images")
    assert "copy-of-p3.jpg" in done.stdout


def _search(client: httpx.Client, body: dict) -> list[str]:
    resp = client.post("/v1/collections/dups/search", params={"k": 10}, json=body)
    assert resp.status_code == 202, resp.text
    job = wait_job(client, resp.json()["job_id"])
    assert job["status"] == "succeeded", job
    return [m["image_id"] for m in job["result"]["matches"]]


def test_positive_and_negative_examples_move_the_results(base: str, ids: dict[str, str]) -> None:
    a, b = ids["p10.jpg"], ids["p11.jpg"]
    with httpx.Client(base_url=base, timeout=60) as client:
        like_a = _search(client, {"positive": [{"image_id": a}]})
        assert like_a == _search(client, {"image_id": a})  # one positive example is a search by it
        nearest = like_a[0]
        pushed = _search(client, {"positive": [{"image_id": a}], "negative": [{"image_id": nearest, "weight": 2}]})
        both = _search(client, {"positive": [{"image_id": a}, {"image_id": b}]})
        unknown = client.post("/v1/collections/dups/search", json={"positive": [{"image_id": "0" * 32}]})
        lonely = client.post("/v1/collections/dups/search", json={"negative": [{"image_id": a}]})
    assert a not in like_a and nearest not in pushed and a not in pushed  # examples are never matches
    assert pushed != like_a[1:]  # "less like that" reorders the rest, not only drops the example
    assert a not in both and b not in both
    assert unknown.status_code == 404 and unknown.json()["error"] == "image_not_found"
    assert lonely.status_code == 422 and lonely.json()["error"] == "validation_error"


def test_cli_searches_with_examples(base: str, ids: dict[str, str]) -> None:
    a, b = ids["p20.jpg"], ids["p21.jpg"]
    cmd = [sys.executable, "-m", "simsearch_client", "search", "--like", a, "--unlike", b, "-c", "dups", "--json"]
    done = subprocess.run(
        [*cmd, "--url", base], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr
    matches = [m["image_id"] for m in json.loads(done.stdout)["matches"]]
    assert len(matches) == 10 and a not in matches and b not in matches


def test_batch_search_of_uploaded_copies_finds_each_original(base: str, ids: dict[str, str]) -> None:
    copies = [(f"q{i}.jpg", reencode(photo_bytes(i))) for i in range(20)]
    with httpx.Client(base_url=base, timeout=60) as client:
        files = [("files", (name, data, "image/jpeg")) for name, data in copies]
        # min_similarity=0: all five, whatever the calibrated default keeps (test_no_match.py)
        resp = client.post("/v1/collections/dups/search/batch", params={"k": 5, "min_similarity": 0}, files=files)
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
        assert job["status"] == "succeeded" and job["progress"] == {"total": 20, "done": 20, "failed": 0}
        page = client.get(f"/v1/jobs/{job['job_id']}/results", params={"offset": 5, "limit": 10}).json()
        lines = client.get(f"/v1/jobs/{job['job_id']}/results", params={"format": "jsonl"}).text.splitlines()
    assert page["total"] == 20 and [r["query"] for r in page["results"]] == [f"q{i}.jpg" for i in range(5, 15)]
    rows = [json.loads(line) for line in lines]
    assert [r["query"] for r in rows] == [name for name, _ in copies]
    for i, row in enumerate(rows):
        # The original comes first (or its planted copy, for the photos that have one).
        assert row["matches"][0]["filename"] in (f"p{i}.jpg", f"copy-of-p{i}.jpg"), row
        assert ids[f"p{i}.jpg"] in [m["image_id"] for m in row["matches"][:2]]
        assert len(row["matches"]) == 5


def test_batch_search_of_all_matches_direct_searches(base: str, ids: dict[str, str]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        resp = client.post("/v1/collections/dups/search/batch", params={"k": 3}, json={"all": True})
        assert resp.status_code == 202, resp.text
        job = wait_job(client, resp.json()["job_id"])
        assert job["status"] == "succeeded" and job["progress"]["total"] == len(ids)
        rows = [json.loads(x) for x in client.get(f"/v1/jobs/{job['job_id']}/results?format=jsonl").text.splitlines()]
        assert len(rows) == len(ids) and {r["image_id"] for r in rows} == set(ids.values())
        for row in rows:  # every row against the single search by the same image
            direct = client.post("/v1/collections/dups/search", params={"k": 3}, json={"image_id": row["image_id"]})
            single = wait_job(client, direct.json()["job_id"])["result"]["matches"]
            assert [m["image_id"] for m in row["matches"]] == [m["image_id"] for m in single]
            assert row["image_id"] not in [m["image_id"] for m in row["matches"]]
        bad = client.post("/v1/collections/dups/search/batch", json={"image_ids": ["nope"]})
        assert bad.status_code == 422 and bad.json()["error"] == "validation_error"


def test_a_batch_over_the_match_budget_is_refused_before_it_runs(base: str, ids: dict[str, str]) -> None:
    """k x queries is bounded (MAX_BATCH_MATCHES): one `all` batch at k=1000 once put 330 MB in
    Redis for a week. `all` counts the collection's images as its queries."""
    with httpx.Client(base_url=base, timeout=60) as client:
        resp = client.post("/v1/collections/dups/search/batch", params={"k": 4}, json={"all": True})
        assert resp.status_code == 413 and resp.json()["error"] == "batch_too_large", resp.text
        assert "1,220 matches" in resp.json()["detail"] and "k <= 3" in resp.json()["detail"]
        ids_list = list(ids.values())[:200]  # 200 x k=6 = 1,200
        many = client.post("/v1/collections/dups/search/batch", params={"k": 6}, json={"image_ids": ids_list})
        assert many.status_code == 413 and many.json()["error"] == "batch_too_large"


def test_cli_batch_search_of_a_folder(base: str, ids: dict[str, str], tmp_path: Path) -> None:
    for i in range(6):
        (tmp_path / f"q{i}.jpg").write_bytes(reencode(photo_bytes(40 + i)))
    cmd = [sys.executable, "-m", "simsearch_client", "search", "--batch", str(tmp_path), "-c", "dups", "-k", "3"]
    done = subprocess.run(
        [*cmd, "--url", base], capture_output=True, text=True, timeout=300, cwd=Path(__file__).parents[2]
    )
    assert done.returncode == 0, done.stderr
    rows = [line.split("\t") for line in done.stdout.splitlines() if line.startswith("q")]
    assert sorted((q, name) for q, _, name, _ in rows) == [(f"q{i}.jpg", f"p{40 + i}.jpg") for i in range(6)]
